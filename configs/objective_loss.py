"""Validation loss of any objective (its own training loss on the val split, fixed seed-derived masks).

Usage: python -m mim_jax.evaluate --config=configs/objective_loss.py --config.init_from=PRETRAIN_WORKDIR --workdir=DIR
"""
import ml_collections

from mim_jax.config.defaults import objective_loss_config, standalone_eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """objective_loss fields (config.eval) plus where the model and data come from."""
    del arg
    return standalone_eval_config("objective_loss", objective_loss_config())
