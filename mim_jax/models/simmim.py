"""SimMIM (Xie et al. 2022) on a ViT: block-wise random masks, encoder over all tokens with a mask token, linear head.

Masks are drawn on a coarse grid of `mask_patch_size` cells (32 px by default) and upsampled to the model's
patch grid; the encoder replaces masked patch embeddings by a learned mask token and sees every token; a
linear head per patch token (SimMIM's 1x1 conv + pixel shuffle) predicts the raw pixels of its patch.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.errors import ConfigError
from mim_jax.models.patches import unpatchify
from mim_jax.models.vit import Encoder, partitioned

HEAD_INIT_STD = 0.02  # normal truncated at 2 std, zero bias (HF ViTForMaskedImageModeling: std 0.02, zero bias)


def validate_mask_geometry(image_size: int, patch_size: int, mask_patch_size: int, ratio: float) -> None:
    """ConfigError naming simmim.mask_patch_size / simmim.mask_ratio when the mask grid or ratio cannot work."""
    if mask_patch_size <= 0 or mask_patch_size % patch_size:
        raise ConfigError(f"simmim.mask_patch_size={mask_patch_size} must be a positive multiple of the model's "
                          f"patch size {patch_size}, e.g. {2 * patch_size}")
    if image_size % mask_patch_size:
        raise ConfigError(f"simmim.mask_patch_size={mask_patch_size} must divide the image size {image_size}; "
                          f"use a divisor of {image_size} that is a multiple of {patch_size}")
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"simmim.mask_ratio={ratio} must lie in (0, 1), e.g. 0.6")


def num_masked_cells(cells: int, ratio: float) -> int:
    """Cells masked per image: ceil(ratio * cells), computed in float64 as SimMIM's MaskGenerator does."""
    return int(math.ceil(cells * ratio))


def upsample_grid_mask(mask: jax.Array, factor: int) -> jax.Array:
    """[B, g*g] mask on a square grid -> [B, (g*factor)^2]: each cell covers factor x factor finer cells (raster)."""
    b, cells = mask.shape
    g = math.isqrt(cells)
    if g * g != cells:
        raise ValueError(f"upsample_grid_mask needs a square grid, got {cells} cells")
    grid = mask.reshape(b, g, 1, g, 1)
    grid = jnp.broadcast_to(grid, (b, g, factor, g, factor))
    return grid.reshape(b, (g * factor) ** 2)


def masks_from_noise(noise: jax.Array, num_masked: int, factor: int) -> jax.Array:
    """Mask the `num_masked` cells of lowest noise per row of `noise` [B, cells], upsampled by `factor`; float32."""
    ranks = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    return upsample_grid_mask((ranks < num_masked).astype(jnp.float32), factor)


def sample_masks(key: jax.Array, batch_size: int, image_size: int, mask_patch_size: int, patch_size: int,
                 ratio: float) -> jax.Array:
    """SimMIM masks [B, (S/p)^2] (1 = masked, raster order): ceil(r * (S/m)^2) cells per image, uniform at random.

    Static shapes; the noise is drawn over the global batch from `key`, so the masks do not depend on the mesh.
    """
    validate_mask_geometry(image_size, patch_size, mask_patch_size, ratio)
    cells = (image_size // mask_patch_size) ** 2
    noise = jax.random.uniform(key, (batch_size, cells))
    return masks_from_noise(noise, num_masked_cells(cells, ratio), mask_patch_size // patch_size)


class SimMIM(nn.Module):
    """Encoder (with mask token) + linear pixel head. `__call__(images, mask)` -> dict(reconstruction, mask).

    The encoder is any backbone (mim_jax.models.backbones) with `prefix_tokens` (dropped before the head) and
    `output_stride` (pixels per output token side: the ViT patch, or SwinV2's 32).
    """
    encoder: Encoder

    @nn.compact
    def __call__(self, images: jax.Array, mask: jax.Array, train: bool = False) -> dict:
        """images [B, S, S, 3], mask [B, N] (1 = masked) -> reconstruction [B, S, S, 3] (fp32) and the mask."""
        p = self.encoder.output_stride
        tokens = self.encoder(images, token_mask=mask, train=train)[:, self.encoder.prefix_tokens:]
        # SimMIM's decoder, a 1x1 conv to p*p*3 channels + PixelShuffle(p), is this Dense per output token; its
        # outputs are in our patch order (row, col, channel) (see unpatchify).
        pred = nn.Dense(p * p * 3, dtype=self.encoder.dtype, name="head",
                        kernel_init=partitioned(nn.initializers.truncated_normal(HEAD_INIT_STD), ("embed", "patch")),
                        bias_init=partitioned(nn.initializers.zeros, ("patch",)))(tokens)
        return {"reconstruction": unpatchify(pred.astype(jnp.float32), p), "mask": mask}
