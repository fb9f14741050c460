"""SimMIM on the embedded 'shapes' dataset: the quickstart's tiny ViT and evaluation, with SimMIM as the objective.

Usage: python -m mim_jax.pretrain --config=configs/simmim_demo.py --workdir=workdirs/simmim_demo
Writes evals/linear_probe.json, knn.json, fewshot.json and their *_random_init.json like configs/demo.py. The mask
cells are 16 px (a 4 x 4 grid at 64 px, 10 of 16 cells masked): SimMIM's 32-px cells scaled to the small images.
"""
import ml_collections

from mim_jax.config.recipes import load_sibling


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The quickstart's model, data, schedule and evaluators (Ti/16 x 4 blocks at 64 px, 500 steps) under SimMIM."""
    if arg:
        raise ValueError(f"configs/simmim_demo.py:{arg}: takes no argument")
    c = load_sibling(__file__, "demo.py").shared_config()
    c.objective = "simmim"
    c.simmim.mask_patch_size = 16
    c.simmim.mask_ratio = 0.6
    c.evals.val_loss.every_steps = 0  # the MAE pixel reconstruction loss does not apply to SimMIM
    return c
