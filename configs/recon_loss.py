"""Validation reconstruction loss (MAE loss on the val split, fixed masks) of a pretraining checkpoint.

Usage: python -m mim_jax.evaluate --config=configs/recon_loss.py --config.init_from=PRETRAIN_WORKDIR --workdir=DIR
"""
import ml_collections

from mim_jax.config.defaults import recon_loss_config, standalone_eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Reconstruction-loss fields (config.eval) plus where the model and data come from."""
    del arg
    return standalone_eval_config("val_loss", recon_loss_config())
