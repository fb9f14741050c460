"""Evaluate an encoder straight from a weights file: any file `python -m mim_jax.convert` reads.

Official MAE and MAWS checkpoints, DINO (timm or HF), timm exports and mim_jax-format files become this
project's `Encoder` (fixed sin-cos or learned positions), so the probe, kNN, few-shot and fine-tuning all
apply. CLIP towers (QuickGELU, ln_pre, projection) differ from that encoder and are refused with the reason.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.convert.loading import load_any
from mim_jax.errors import ConfigError
from mim_jax.models.teachers import (
    ViTArch,
    abstract_params,
    params_at_grid,
    place_teacher_params,
)
from mim_jax.models.vit import Encoder
from mim_jax.parallel.sharding import sharding_context

# What the evaluators' Encoder fixes; an imported arch must agree on each.
ENCODER_FIXED = dict(activation="gelu", patch_bias=True, ln_pre=False, proj_dim=0, mean_std=ViTArch.mean_std)


@dataclasses.dataclass(frozen=True)
class EncoderOnly:
    """The evaluation model of a weights file: an encoder without decoder (so no reconstruction loss)."""
    encoder: Encoder


def encoder_for(arch: ViTArch, image_size: int, source: str) -> Encoder:
    """The Encoder that runs `arch` at `image_size` px (0: the resolution the weights were trained at)."""
    differing = [f"{k}={getattr(arch, k)!r} (ours {v!r})" for k, v in ENCODER_FIXED.items() if getattr(arch, k) != v]
    if differing:
        raise ConfigError(f"init_from={source!r}: this ViT differs from the encoder the evaluators build in "
                          f"{', '.join(differing)} (a CLIP tower?); it can serve as a pretraining teacher "
                          f"(teacher.weights) but not be probed or fine-tuned here")
    size = image_size or arch.grid_size * arch.patch_size
    if size % arch.patch_size:
        raise ConfigError(f"image_size={size} is not a multiple of the checkpoint's patch size {arch.patch_size}")
    return Encoder(arch.width, arch.depth, arch.heads, arch.mlp_dim, arch.patch_size, size,
                   positions=arch.positions, ln_eps=arch.ln_eps)


def load_weights_file(path: str, image_size: int, mesh, rules, random_init: bool = False,
                      seed: int = 0) -> tuple[EncoderOnly, dict[str, Any]]:
    """(model, {'encoder': params on the mesh}) of a weights file; learned positions resized to the grid.

    With `random_init`, the same architecture at a fresh initialization from `seed` (a baseline).
    """
    arch, _, host = load_any(path)
    encoder = encoder_for(arch, image_size, path)
    abstract, shardings = abstract_params(encoder, encoder.image_size, jnp.float32, mesh, rules)
    if random_init:
        images = jnp.zeros((1, encoder.image_size, encoder.image_size, 3))
        with sharding_context(mesh, rules):
            params = jax.jit(lambda r: nn.unbox(encoder.init(r, images)["params"]),
                             out_shardings=shardings)(jax.random.key(seed))
    else:
        params = place_teacher_params(params_at_grid(host["encoder"], arch, encoder.grid_size), abstract,
                                      what="encoder")
    return EncoderOnly(encoder), {"encoder": params}
