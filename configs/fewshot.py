"""Few-shot (1/5/10/25 shots, closed-form ridge, 3 seeds) on a pretrained encoder's frozen features.

Usage: python -m mim_jax.evaluate --config=configs/fewshot.py --config.init_from=PRETRAIN_WORKDIR --workdir=DIR
"""
import ml_collections

from mim_jax.config.defaults import fewshot_config, standalone_eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Few-shot fields (config.eval) plus where the encoder and data come from."""
    del arg
    return standalone_eval_config("fewshot", fewshot_config())
