"""Images <-> non-overlapping patch vectors, in (row, col, channel) order within a patch (MAE's convention)."""
from __future__ import annotations

import jax


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in raster order, pixels (row, col, channel)."""
    b, h, w, c = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, channels: int = 3) -> jax.Array:
    """Inverse of `patchify` for a square grid."""
    b, length, _ = patches.shape
    g = int(round(length ** 0.5))
    if g * g != length:
        raise ValueError(f"unpatchify needs a square patch grid, got {length} patches")
    p = patch_size
    x = patches.reshape(b, g, g, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, g * p, g * p, channels)
