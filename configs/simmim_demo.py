"""SimMIM on the embedded 'shapes' dataset: the quickstart's tiny ViT and evaluation, with SimMIM as the objective.

Usage: python -m mim_jax.pretrain --config=configs/simmim_demo.py --workdir=workdirs/simmim_demo
       python -m mim_jax.pretrain --config=configs/simmim_demo.py:swinv2 --workdir=workdirs/simmim_demo_swinv2
Writes evals/linear_probe.json, knn.json, fewshot.json and their *_random_init.json like configs/demo.py. The mask
cells are 16 px (a 4 x 4 grid at 64 px, 10 of 16 cells masked): SimMIM's 32-px cells scaled to the small images.
`swinv2` (300 steps x 128 images) swaps the ViT for the CPU-sized SwinV2 (`swinv2_cpu`: width 32, depths 2-2-2-2, patch 4, window 4: stage
grids 16, 8, 4, 2; encoder stride 32, so the head predicts 32 x 32 x 3 pixels per output token); the evaluators pool
its tokens globally (no CLS).
"""
import ml_collections

from mim_jax.config.recipes import load_sibling

ARGS = ("", "swinv2")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The quickstart's model, data, schedule and evaluators (Ti/16 x 4 blocks at 64 px, 500 steps) under SimMIM."""
    if arg not in ARGS:
        raise ValueError(f"configs/simmim_demo.py:{arg}: use configs/simmim_demo.py or configs/simmim_demo.py:swinv2")
    c = load_sibling(__file__, "demo.py").shared_config()
    c.objective = "simmim"
    c.simmim.mask_patch_size = 16
    c.simmim.mask_ratio = 0.6
    c.evals.val_loss.every_steps = 0  # the MAE pixel reconstruction loss does not apply to SimMIM
    if arg == "swinv2":
        c.model.update({"family": "swinv2", "variant": "swinv2_cpu", "depth": 0, "window_size": 4})
        # A SwinV2 step costs several times the ViT's on CPU (256 tokens in stage 1, windows, shifts): 300 steps x
        # 128 images.
        c.data.global_batch_size = 128
        c.total_steps = 300
        c.optim.warmup_steps = 30
        c.ckpt.every_steps = 100
    return c
