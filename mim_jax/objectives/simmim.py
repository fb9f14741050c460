"""SimMIM (Xie et al. 2022) as an objective: masks, L1 on masked pixels against the (window-normalized) image.

The target is the (ImageNet mean/std-normalized) input image. With `norm_window` k > 0 each pixel is first
standardized by the mean and unbiased variance of its k x k neighbourhood, per channel, counting only the
pixels inside the image (SimMIM's `norm_targets`, "On Data Scaling in Masked Image Modeling").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mim_jax.data.transforms import normalize
from mim_jax.errors import ConfigError
from mim_jax.models import backbones, flops
from mim_jax.models.simmim import (
    SimMIM,
    sample_masks,
    upsample_grid_mask,
    validate_mask_geometry,
)
from mim_jax.objectives.base import Objective

WINDOW_NORM_EPS = 1e-6
L1_EPS = 1e-5  # added to the masked-pixel count (SimMIM, HF ViTForMaskedImageModeling)


def validate_norm_window(window: int) -> None:
    """ConfigError naming simmim.norm_target_window unless it is 0 (off) or an odd size >= 3."""
    if window == 0:
        return
    if window < 3 or window % 2 == 0:
        raise ConfigError(f"simmim.norm_target_window={window} must be 0 (off) or an odd window size >= 3 (a 1-px "
                          f"window has no variance), e.g. 47 as in Xie et al.")


def _window_sums(x: jax.Array, window: int) -> jax.Array:
    """Per-channel sums over the window x window neighbourhood of each pixel of [B, H, W, C], zero-padded."""
    pad = window // 2
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, window, window, 1), (1, 1, 1, 1),
                                 ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def window_normalize(images: jax.Array, window: int) -> jax.Array:
    """(x - local mean) / sqrt(local unbiased var + 1e-6) per channel over in-image pixels of a window; fp32."""
    validate_norm_window(window)
    x = images.astype(jnp.float32)
    count = _window_sums(jnp.ones((1,) + x.shape[1:3] + (1,), jnp.float32), window)
    mean = _window_sums(x, window) / count
    mean_sq = _window_sums(x * x, window) / count
    var = jnp.maximum((mean_sq - mean * mean) * (count / (count - 1)), 0.0)
    return (x - mean) / jnp.sqrt(var + WINDOW_NORM_EPS)


def masked_l1(pred: jax.Array, target: jax.Array, pixel_mask: jax.Array) -> jax.Array:
    """Sum of |pred - target| over masked pixels and channels / (masked pixels + 1e-5) / channels; fp32.

    pred, target [B, H, W, C]; pixel_mask [B, H, W] (1 = masked).
    """
    mask = pixel_mask.astype(jnp.float32)
    error = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))
    return jnp.sum(error * mask[..., None]) / (jnp.sum(mask) + L1_EPS) / pred.shape[-1]


def pixel_mask(mask: jax.Array, patch_size: int) -> jax.Array:
    """Patch mask [B, N] (square grid, raster) -> pixel mask [B, H, W] with H = W = sqrt(N) * patch_size."""
    pixels = upsample_grid_mask(mask, patch_size)
    side = round(pixels.shape[1] ** 0.5)
    return pixels.reshape(mask.shape[0], side, side)


def simmim_loss(outputs: dict, images_normalized: jax.Array, patch_size: int, norm_window: int = 0) -> jax.Array:
    """SimMIM loss (scalar fp32): masked L1 of outputs['reconstruction'] vs the (window-normalized) input image."""
    target = images_normalized.astype(jnp.float32)
    if norm_window:
        target = window_normalize(target, norm_window)
    target = jax.lax.stop_gradient(target)
    return masked_l1(outputs["reconstruction"], target, pixel_mask(outputs["mask"], patch_size))


def config_block() -> ml_collections.ConfigDict:
    """config.simmim: the mask grid and the target normalization of SimMIM."""
    b = ml_collections.ConfigDict()
    b.mask_patch_size = 32            # px per mask cell: a multiple of the patch size that divides the image
    b.mask_ratio = 0.6                # ceil(ratio * cells) cells masked per image
    b.norm_target_window = 0          # 0 = raw normalized pixels; odd k: k x k window normalization (Xie et al.: 47)
    return b


def build_model(config, unroll: bool = False) -> SimMIM:
    """The SimMIM (encoder with mask token + linear pixel head) of `config.model` (any backbone family)."""
    return SimMIM(encoder=backbones.build_encoder(config.model, unroll=unroll))


def init_inputs(model: SimMIM, config) -> tuple:
    """(images [1, S, S, 3], mask [1, N]) for model.init (the mask path creates the mask token)."""
    size = model.encoder.image_size
    return jnp.zeros((1, size, size, 3), jnp.float32), jnp.zeros((1, model.encoder.grid_size ** 2), jnp.float32)


def sample(model: SimMIM, config, key: jax.Array, batch_size: int) -> dict:
    """{'mask': [B, N]}: the step's SimMIM masks over the global batch."""
    s = config.simmim
    return {"mask": sample_masks(key, batch_size, model.encoder.image_size, s.mask_patch_size,
                                 model.encoder.patch_size, s.mask_ratio)}


def make_loss(model: SimMIM, config, frozen=None):
    """loss(params, batch, rng, frozen_params) -> (masked L1 on (window-normalized) pixels, {})."""
    window = config.simmim.norm_target_window
    drop_path = config.model.get("drop_path", 0.0) > 0

    def loss(params, batch, rng, frozen_params=None):
        x = normalize(batch["image"])
        kwargs = {"train": True, "rngs": {"dropout": rng}} if drop_path else {}
        outputs = model.apply({"params": params}, x, batch["mask"], **kwargs)
        return simmim_loss(outputs, x, model.encoder.patch_size, window), {}
    return loss


def flops_per_example(config) -> float:
    """3x the forward: the encoder on all tokens and the linear head on the output tokens (stride^2 x 3 each)."""
    backbone = backbones.get(config.model)
    stride = backbone.output_stride(config.model)
    n = (config.model.image_size // stride) ** 2
    head = flops.matmul_flops(n, stride ** 2 * 3, backbone.output_width(config.model))
    return 3.0 * (backbone.forward_flops(config.model) + head)


def validate(config, check_paths: bool = True) -> None:
    """Check config.simmim against the model's image and patch size."""
    s = config.simmim
    validate_mask_geometry(config.model.image_size, backbones.get(config.model).patch_size(config.model),
                           s.mask_patch_size, s.mask_ratio)
    validate_norm_window(s.norm_target_window)


OBJECTIVE = Objective(
    name="simmim", build_model=build_model, init_inputs=init_inputs, sample=sample, make_loss=make_loss,
    flops_per_example=flops_per_example, validate=validate, config_blocks={"simmim": config_block},
    description="SimMIM: mask token, linear pixel head, L1 on masked pixels (Xie et al. 2022)")
