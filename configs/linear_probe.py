"""Linear probe (MAE protocol) of a pretrained encoder.

Usage: python -m mim_jax.evaluate --config=configs/linear_probe.py --config.init_from=PRETRAIN_WORKDIR
       --workdir=DIR [--config.eval.epochs=90 ...]
The model comes from PRETRAIN_WORKDIR/config.json; the data defaults to the pretraining run's dataset.
"""
import ml_collections

from mim_jax.config.defaults import probe_config, standalone_eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Probe fields (config.eval) plus where the encoder and data come from."""
    del arg
    return standalone_eval_config("linear_probe", probe_config())
