"""Weighted kNN (DINO: cosine, k=20, T=0.07) of a pretrained encoder's frozen features.

Usage: python -m mim_jax.evaluate --config=configs/knn.py --config.init_from=PRETRAIN_WORKDIR --workdir=DIR
"""
import ml_collections

from mim_jax.config.defaults import knn_config, standalone_eval_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """kNN fields (config.eval) plus where the encoder and data come from."""
    del arg
    return standalone_eval_config("knn", knn_config())
