"""The backbones by name: `config.model.family` picks one ('vit' default, 'swinv2'); a new one is its module plus
one line here.

Each backbone gives its encoder from config, its input patch (the mask-token grid), output stride and width,
prefix tokens (CLS: 1, none: 0, so evaluators pool globally), encoder forward FLOPs, validation, and the size
names. Encoders also carry `prefix_tokens`, `output_stride` and `grid_size` themselves (what the SimMIM head and
the evaluators read), and an encoder with a `layer_ids(params)` method gives its own layer-wise lr decay ids.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.errors import ConfigError
from mim_jax.models import flops, swinv2, vit


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One encoder family (see the module docstring)."""
    name: str
    build_encoder: Callable[[Any, bool], nn.Module]   # (model_cfg, unroll) -> encoder
    patch_size: Callable[[Any], int]                  # input patch: the token grid the mask token acts on
    output_stride: Callable[[Any], int]               # pixels per output token side
    output_width: Callable[[Any], int]                # width of the output tokens
    prefix_tokens: int                                # CLS tokens before the patch tokens
    forward_flops: Callable[[Any], float]             # encoder forward FLOPs per example on all tokens
    validate: Callable[[Any], None]                   # ConfigError naming the model field
    variants: tuple[str, ...]


def _vit_dims(model_cfg) -> dict:
    return vit.resolve_dims(model_cfg)


def _vit_validate(model_cfg) -> None:
    if model_cfg.variant not in vit.VIT_SIZES:
        raise ConfigError(f"model.variant={model_cfg.variant!r}: use one of {sorted(vit.VIT_SIZES)} (or "
                          f"--config.model.family=swinv2 with one of {sorted(swinv2.SWINV2_SIZES)})")
    patch = _vit_dims(model_cfg)["patch_size"]
    if model_cfg.image_size <= 0 or model_cfg.image_size % patch:
        raise ConfigError(f"model.image_size={model_cfg.image_size!r}: must be a positive multiple of the patch "
                          f"size {patch}")


def _swin_validate(model_cfg) -> None:
    if model_cfg.variant not in swinv2.SWINV2_SIZES:
        raise ConfigError(f"model.variant={model_cfg.variant!r}: model.family='swinv2' takes one of "
                          f"{sorted(swinv2.SWINV2_SIZES)}")
    swinv2.validate(model_cfg)


def _swin_output_width(model_cfg) -> int:
    size = swinv2.resolve_size(model_cfg)
    return size.embed_dim * 2 ** (len(size.depths) - 1)


BACKBONES: dict[str, Backbone] = {
    "vit": Backbone("vit", vit.encoder_from_config, lambda m: _vit_dims(m)["patch_size"],
                    lambda m: _vit_dims(m)["patch_size"], lambda m: _vit_dims(m)["width"], 1, flops.vit_forward_flops_per_example,
                    _vit_validate, tuple(vit.VIT_SIZES)),
    "swinv2": Backbone("swinv2", swinv2.encoder_from_config, lambda m: swinv2.resolve_size(m).patch_size,
                       lambda m: swinv2.resolve_size(m).patch_size * 2 ** (len(swinv2.resolve_size(m).depths) - 1),
                       _swin_output_width, 0, swinv2.forward_flops_per_example, _swin_validate,
                       tuple(swinv2.SWINV2_SIZES)),
}


def get(model_cfg) -> Backbone:
    """The backbone of `model_cfg.family` (runs saved before the field existed: 'vit')."""
    family = model_cfg.get("family", "vit")
    if family not in BACKBONES:
        raise ConfigError(f"model.family={family!r} is not a registered backbone; use one of {sorted(BACKBONES)}")
    return BACKBONES[family]


def build_encoder(model_cfg, unroll: bool = False) -> nn.Module:
    """The encoder of `model_cfg` (its family's builder)."""
    return get(model_cfg).build_encoder(model_cfg, unroll)


def count_params(model_cfg) -> int:
    """Encoder parameters from abstract shapes (no memory allocated)."""
    encoder = build_encoder(model_cfg)
    size = model_cfg.image_size
    shapes = jax.eval_shape(lambda: nn.unbox(encoder.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))))
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)))
