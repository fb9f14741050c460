"""MAE checkpoints with their decoder (official MAE `{'model': ...}` and HF ViTMAEForPreTraining) -> MAE params.

The result is the params tree of `mim_jax.models.mae.MAE` ({'encoder': ..., 'decoder': ...}); the
decoder's sin-cos position table is fixed (not a parameter), as in the checkpoints.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from mim_jax.convert.layouts import HF_VIT, TIMM, Layout, _block, _linear, _norm, count_blocks, find_layout, \
    import_vit, stack_blocks
from mim_jax.errors import ConfigError
from mim_jax.models.teachers import ViTArch

OFFICIAL_MAE_DECODER_HEADS = 16  # every official MAE decoder (width 512)


@dataclasses.dataclass(frozen=True)
class DecoderLayout:
    """Names of an MAE decoder's tensors (blocks use `blocks` as a ViT layout)."""
    embed: str
    mask_token: str
    blocks: Layout
    norm: str
    pred: str


OFFICIAL_DECODER = DecoderLayout("decoder_embed", "mask_token", dataclasses.replace(TIMM, block="decoder_blocks.{i}."),
                                 "decoder_norm", "decoder_pred")
HF_DECODER = DecoderLayout("decoder.decoder_embed", "decoder.mask_token",
                           dataclasses.replace(HF_VIT, block="decoder.decoder_layers.{i}."), "decoder.decoder_norm",
                           "decoder.decoder_pred")


@dataclasses.dataclass(frozen=True)
class DecoderDims:
    """Decoder sizes found in a checkpoint (what config.model.decoder must hold to use it)."""
    width: int
    depth: int
    heads: int
    mlp_dim: int
    out_dim: int


def has_decoder(sd: dict) -> bool:
    """Whether the state dict carries an MAE decoder."""
    return any(layout.embed + ".weight" in sd for layout in (OFFICIAL_DECODER, HF_DECODER))


def import_decoder(sd: dict, heads: int = 0, hf_config: Optional[dict] = None) -> tuple[DecoderDims, dict]:
    """(DecoderDims, numpy Decoder params) of an official-MAE or HF-ViTMAE state dict."""
    layout = OFFICIAL_DECODER if OFFICIAL_DECODER.embed + ".weight" in sd else HF_DECODER
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
    embed = sd[layout.embed + ".weight"]
    width = embed.shape[0]
    depth = count_blocks(layout.blocks, "", sd)
    heads = heads or int((hf_config or {}).get("decoder_num_attention_heads", OFFICIAL_MAE_DECODER_HEADS))
    if width % heads:
        raise ConfigError(f"decoder width {width} is not divisible by {heads} heads; pass the decoder's heads")
    blocks = stack_blocks([_block(sd, layout.blocks, "", i, heads) for i in range(depth)])
    params = {"embed": _linear(sd, layout.embed), "mask_token": sd[layout.mask_token].reshape(1, 1, width),
              "blocks": {"layers": blocks}, "norm": _norm(sd, layout.norm), "pred": _linear(sd, layout.pred)}
    dims = DecoderDims(width, depth, heads, blocks["mlp"]["fc1"]["kernel"].shape[-1],
                       params["pred"]["kernel"].shape[1])
    return dims, params


def import_mae(sd: dict, heads: int = 0, hf_config: Optional[dict] = None,
               variant: str = "") -> tuple[ViTArch, Optional[DecoderDims], dict]:
    """(encoder arch, decoder dims or None, {'encoder': ..., 'decoder': ...} or {'encoder': ...})."""
    arch, encoder = import_vit(sd, heads, hf_config, variant)
    if not has_decoder(sd):
        return arch, None, {"encoder": encoder}
    layout, _ = find_layout(sd.keys())
    if layout not in (TIMM, HF_VIT):
        raise ConfigError(f"a decoder next to a {layout.name} encoder is not an MAE checkpoint")
    dims, decoder = import_decoder(sd, 0, hf_config)
    return arch, dims, {"encoder": encoder, "decoder": decoder}
