"""Reconstruction targets and losses. Patch vectors are in (row, col, channel) order, as in MAE."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mim_jax.models.patches import patchify, unpatchify  # noqa: F401  (unpatchify: re-exported)

NORM_PIX_EPS = 1e-6


def pixel_targets(images: jax.Array, patch_size: int, normalize: bool) -> jax.Array:
    """Per-patch targets from (mean/std-normalized) images; `normalize` standardizes each patch (MAE norm_pix)."""
    target = patchify(images.astype(jnp.float32), patch_size)
    if not normalize:
        return target
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    return (target - mean) / jnp.sqrt(var + NORM_PIX_EPS)


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean squared error per patch, averaged over masked patches only (mask 1 = removed); fp32."""
    per_patch = jnp.mean((pred.astype(jnp.float32) - target) ** 2, axis=-1)
    return jnp.sum(per_patch * mask) / jnp.sum(mask)


def mae_pixel_loss(outputs: dict, images: jax.Array, patch_size: int, norm_pix_loss: bool) -> jax.Array:
    """MAE loss: MSE between decoder predictions and (normalized) pixel patches on masked tokens."""
    target = jax.lax.stop_gradient(pixel_targets(images, patch_size, norm_pix_loss))
    return masked_mse(outputs["pred"], target, outputs["mask"])


FEATURE_NORM_EPS = 1e-6


def l2_normalize(x: jax.Array) -> jax.Array:
    """Each feature vector (last axis) divided by its l2 norm (floored at 1e-6); fp32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), FEATURE_NORM_EPS)


def teacher_feature_loss(pred: jax.Array, teacher_features: jax.Array) -> jax.Array:
    """Lu et al. Eq. 1: mean over the N+1 tokens (and the batch) of ||pred/|pred| - t/|t|||^2, t frozen; fp32.

    pred and teacher_features are [B, 1+N, D] (CLS first); every token counts, masked or visible.
    """
    target = jax.lax.stop_gradient(l2_normalize(teacher_features))
    return jnp.mean(jnp.sum((l2_normalize(pred) - target) ** 2, axis=-1))
