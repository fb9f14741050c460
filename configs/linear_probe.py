"""Linear probe (MAE protocol) of a pretrained encoder.

Usage: python -m mim_jax.evaluate --config=configs/linear_probe.py --config.init_from=PRETRAIN_WORKDIR
       --workdir=DIR
The model comes from PRETRAIN_WORKDIR/config.json; the data defaults to the pretraining run's dataset.
"""
import ml_collections

from mim_jax.configuration import base_config, probe_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Probe fields plus where the encoder and data come from."""
    del arg
    c = ml_collections.ConfigDict()
    c.name = "linear_probe"           # -> WORKDIR/evals/<name>.json
    c.init_from = ""                  # a pretraining workdir (latest step) or WORKDIR/checkpoints/<step>
    c.random_init = False             # probe the run's encoder at its random init instead (a baseline)
    c.seed = 0
    c.data = base_config().data
    c.data.source = "same_as_pretraining"  # or arrayrecord / synthetic with the fields below
    c.mesh = base_config().mesh
    c.probe = probe_config()
    return c
