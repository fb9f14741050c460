"""Frozen-encoder features over a dataset split, computed sharded over the mesh and across processes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.data import pipeline
from mim_jax.data.transforms import normalize
from mim_jax.models.vit import Encoder
from mim_jax.parallel.sharding import global_batch, replicated, sharding_context

POOLS = ("cls", "mean")


def pool_tokens(tokens: jax.Array, pool: str, prefix_tokens: int = 1) -> jax.Array:
    """[B, prefix+N, D] normed tokens -> [B, D]: the CLS token, or the mean of the patch tokens.

    An encoder without a CLS token (prefix_tokens=0, SwinV2) is pooled globally for either setting.
    """
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r}; use one of {POOLS}")
    if pool == "cls" and prefix_tokens:
        return tokens[:, 0]
    return tokens[:, prefix_tokens:].mean(axis=1)


def make_feature_fn(encoder: Encoder, pool: str, mesh, rules):
    """jit(params, batch) -> {features [B, D] float32, label, mask}, all gathered (replicated) on every device."""
    def features(params, batch):
        tokens = encoder.apply({"params": params}, normalize(batch["image"]))
        pooled = pool_tokens(tokens, pool, getattr(encoder, "prefix_tokens", 1))
        return {"features": pooled.astype(jnp.float32), "label": batch["label"],
                "mask": batch["mask"]}

    jitted = jax.jit(features, out_shardings=replicated(mesh))

    def run(params, batch):
        with sharding_context(mesh, rules):
            return jitted(params, batch)
    return run


def extract_features(encoder: Encoder, params, dataset_dir: str, split: str, *, pool: str, batch_size: int,
                     mesh, rules, max_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, D] float32, labels [N] int32) for the first `max_examples` records of `split`."""
    feature_fn = make_feature_fn(encoder, pool, mesh, rules)
    feats, labels = [], []
    for local in pipeline.eval_batches(dataset_dir, split, batch_size=batch_size, image_size=encoder.image_size,
                                       process_index=jax.process_index(), process_count=jax.process_count(),
                                       max_examples=max_examples):
        out = jax.device_get(feature_fn(params, global_batch(local, mesh, rules)))
        feats.append(out["features"][out["mask"]])
        labels.append(out["label"][out["mask"]])
    return np.concatenate(feats), np.concatenate(labels).astype(np.int32)
