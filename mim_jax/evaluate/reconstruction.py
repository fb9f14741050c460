"""Validation reconstruction loss: the MAE loss on a held-out split with fixed masking noise.

Xie et al. (2023, "On data scaling in masked image modeling") find this loss predicts fine-tuning accuracy.
The noise of eval batch j is uniform(fold_in(key(seed), j)) over the global batch shape, so the masks are the
same at every pretraining step and on every mesh; images get the eval transform (resize + centre crop).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.data import pipeline
from mim_jax.data.transforms import normalize
from mim_jax.models.mae import MAE
from mim_jax.objectives import targets
from mim_jax.objectives.mae import num_patches
from mim_jax.parallel.sharding import global_batch, replicated, sharding_context
from mim_jax.train.step import step_key


def per_example_loss(model: MAE, params, images: jax.Array, noise: jax.Array, norm_pix_loss: bool) -> jax.Array:
    """[B] MAE loss of each image (mean squared error over its masked patches)."""
    x = normalize(images)
    outputs = model.apply({"params": params}, x, noise)
    target = targets.pixel_targets(x, model.encoder.patch_size, norm_pix_loss)
    per_patch = jnp.mean((outputs["pred"].astype(jnp.float32) - target) ** 2, axis=-1)
    return jnp.sum(per_patch * outputs["mask"], axis=1) / jnp.sum(outputs["mask"], axis=1)


def make_loss_fn(model: MAE, norm_pix_loss: bool, seed: int, batch_size: int, mesh, rules):
    """run(params, batch, batch_index) -> (summed loss over real examples, count), replicated."""
    def batch_loss(params, batch, batch_index):
        noise = jax.random.uniform(step_key(seed, batch_index), (batch_size, num_patches(model)), jnp.float32)
        losses = per_example_loss(model, params, batch["image"], noise, norm_pix_loss)
        mask = batch["mask"].astype(jnp.float32)
        return jnp.sum(losses * mask), jnp.sum(mask)

    jitted = jax.jit(batch_loss, out_shardings=replicated(mesh))

    def run(params, batch, batch_index):
        with sharding_context(mesh, rules):
            return jitted(params, batch, batch_index)
    return run


def validation_loss(model: MAE, params, dataset_dir: str, split: str, *, norm_pix_loss: bool, seed: int,
                    batch_size: int, mesh, rules, max_examples: int | None = None) -> dict:
    """Mean MAE loss over the first `max_examples` records of `split` (all when None) with fixed masks."""
    loss_fn = make_loss_fn(model, norm_pix_loss, seed, batch_size, mesh, rules)
    total, count = 0.0, 0.0
    batches = pipeline.eval_batches(dataset_dir, split, batch_size=batch_size, image_size=model.encoder.image_size,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    max_examples=max_examples)
    for index, local in enumerate(batches):
        loss_sum, n = jax.device_get(loss_fn(params, global_batch(local, mesh, rules), np.int32(index)))
        total, count = total + float(loss_sum), count + float(n)
    return {"loss": total / count, "num_examples": int(count), "split": split, "mask_seed": seed}
