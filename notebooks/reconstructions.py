# %% [markdown]
# # MAE reconstructions of a pretraining run
# Percent-format notebook (open with Jupyter + jupytext, or run as a script):
# `python notebooks/reconstructions.py --workdir=workdirs/demo --out=workdirs/demo/reconstructions.png`
# Rows: original, masked input, reconstruction (visible patches pasted back), for 8 val images.

# %%
import argparse
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from mim_jax.data import pipeline
from mim_jax.data.sources import resolve_dataset_dir
from mim_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from mim_jax.objectives import targets as objectives
from mim_jax.parallel.sharding import DEFAULT_RULES, logical_rules, make_mesh
from mim_jax.train.runs import load_run
from mim_jax.train.step import step_key


def reconstruct(workdir: str, num_images: int = 8, seed: int = 0) -> np.ndarray:
    """uint8 grid [3*H, num_images*W, 3]: originals, masked inputs, reconstructions."""
    mesh_cfg = ml_collections.ConfigDict(dict(shape=(-1, 1, 1), rules=DEFAULT_RULES))
    mesh, rules = make_mesh(mesh_cfg), logical_rules(mesh_cfg)
    cfg, model, params, step = load_run(workdir, mesh, rules)
    batch = next(pipeline.eval_batches(resolve_dataset_dir(cfg.data), cfg.data.val_split, batch_size=num_images,
                                       image_size=cfg.model.image_size))
    images = normalize(batch["image"])
    p = model.encoder.patch_size
    noise = jax.random.uniform(step_key(seed, 0), (num_images, model.encoder.grid_size ** 2))
    out = jax.jit(model.apply)({"params": params}, images, noise)
    target = objectives.patchify(images, p)
    pred = out["pred"]
    if cfg.mae.norm_pix_loss:  # undo the per-patch normalization with the true patch statistics
        mean, var = target.mean(-1, keepdims=True), target.var(-1, ddof=1, keepdims=True)
        pred = pred * jnp.sqrt(var + objectives.NORM_PIX_EPS) + mean
    mask = out["mask"][..., None]
    masked_input = objectives.unpatchify(target * (1 - mask), p)
    pasted = objectives.unpatchify(target * (1 - mask) + pred * mask, p)
    def to_uint8(x):
        return np.clip((np.asarray(x) * IMAGENET_STD + IMAGENET_MEAN) * 255, 0, 255).astype(np.uint8)
    rows = [np.concatenate(list(to_uint8(x)), axis=1) for x in (images, masked_input, pasted)]
    print(f"step {step}: reconstructions of {num_images} val images")
    return np.concatenate(rows, axis=0)


# %% tags=["parameters"]
# Parameters: flags when run as a script; in a notebook kernel the environment (MIM_RUN_DIR, MIM_OUT) or defaults.
parser = argparse.ArgumentParser()
parser.add_argument("--workdir", default=os.environ.get("MIM_RUN_DIR", "workdirs/demo"))
parser.add_argument("--out", default=os.environ.get("MIM_OUT", "workdirs/demo/reconstructions.png"))
args, _ = parser.parse_known_args()  # a kernel's own arguments (-f connection file) are ignored

# %%
grid = reconstruct(args.workdir)
Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(args.out)
print(f"wrote {args.out}")
