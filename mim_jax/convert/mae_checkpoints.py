"""MAE checkpoints with their decoder (official MAE `{'model': ...}` and HF ViTMAEForPreTraining) -> MAE params.

The result is the params tree of `mim_jax.models.mae.MAE` ({'encoder': ..., 'decoder': ...}); the
decoder's sin-cos position table is fixed (not a parameter), as in the checkpoints.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from mim_jax.convert.layouts import (
    HF_VIT,
    SINCOS_ATOL,
    TIMM,
    Layout,
    _block,
    _linear,
    _norm,
    count_blocks,
    find_layout,
    import_vit,
    stack_blocks,
)
from mim_jax.errors import ConfigError
from mim_jax.models.teachers import ViTArch
from mim_jax.models.vit import sincos_2d

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
# transformers >= 5 names the decoder blocks decoder.decoder_encoder.layer.{i}; 4.x decoder.decoder_layers.{i}.
HF_DECODERS = tuple(DecoderLayout("decoder.decoder_embed", "decoder.mask_token",
                                  dataclasses.replace(HF_VIT, block=block), "decoder.decoder_norm",
                                  "decoder.decoder_pred")
                    for block in ("decoder.decoder_encoder.layer.{i}.", "decoder.decoder_layers.{i}."))


@dataclasses.dataclass(frozen=True)
class DecoderDims:
    """Decoder sizes found in a checkpoint (what config.mae.decoder must hold to use it)."""
    width: int
    depth: int
    heads: int
    mlp_dim: int
    out_dim: int


def has_decoder(sd: dict) -> bool:
    """Whether the state dict carries an MAE decoder."""
    return any(layout.embed + ".weight" in sd for layout in (OFFICIAL_DECODER,) + HF_DECODERS)


def decoder_layout(sd: dict) -> DecoderLayout:
    """The decoder layout whose first block is in the state dict."""
    for layout in (OFFICIAL_DECODER,) + HF_DECODERS:
        if count_blocks(layout.blocks, "", sd):
            return layout
    raise ConfigError(f"an MAE decoder without blocks: no key starts with "
                      f"{[l.blocks.block.format(i=0) for l in (OFFICIAL_DECODER,) + HF_DECODERS]}")


def is_sincos(table: np.ndarray) -> bool:
    """Whether a [1 + g*g, D] position table is MAE's fixed 2-D sin-cos table."""
    grid = int(round((table.shape[0] - 1) ** 0.5))
    return grid * grid + 1 == table.shape[0] and np.allclose(table, sincos_2d(table.shape[1], grid), atol=SINCOS_ATOL)


def import_decoder(sd: dict, hf_config: Optional[dict] = None, heads: int = 0) -> tuple[DecoderDims, dict]:
    """(DecoderDims, numpy Decoder params) of an official-MAE or HF-ViTMAE state dict."""
    layout = decoder_layout(sd)
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
    embed = sd[layout.embed + ".weight"]
    width = embed.shape[0]
    depth = count_blocks(layout.blocks, "", sd)
    heads = heads or int((hf_config or {}).get("decoder_num_attention_heads", OFFICIAL_MAE_DECODER_HEADS))
    if width % heads:
        raise ConfigError(f"decoder width {width} is not divisible by {heads} heads; pass the decoder's heads")
    pos = sd.get(layout.embed.replace("decoder_embed", "decoder_pos_embed"))
    if pos is not None and not is_sincos(pos.reshape(-1, width)):
        raise ConfigError("the decoder's position table is not MAE's fixed 2-D sin-cos table, which our decoder "
                          "uses; import the encoder alone (as a teacher or for a probe)")
    blocks = stack_blocks([_block(sd, layout.blocks, "", i, heads) for i in range(depth)])
    params = {"embed": _linear(sd, layout.embed), "mask_token": sd[layout.mask_token].reshape(1, 1, width),
              "blocks": {"layers": blocks}, "norm": _norm(sd, layout.norm), "pred": _linear(sd, layout.pred)}
    dims = DecoderDims(width, depth, heads, blocks["mlp"]["fc1"]["kernel"].shape[-1],
                       params["pred"]["kernel"].shape[1])
    return dims, params


def import_mae(sd: dict, hf_config: Optional[dict] = None, heads: int = 0, variant: str = "",
               decoder_heads: int = 0) -> tuple[ViTArch, Optional[DecoderDims], dict]:
    """(encoder arch, decoder dims or None, {'encoder': ..., 'decoder': ...} or {'encoder': ...})."""
    arch, encoder = import_vit(sd, hf_config, heads, variant)
    if not has_decoder(sd):
        return arch, None, {"encoder": encoder}
    if arch.positions != "sincos":
        raise ConfigError("this MAE checkpoint's encoder position table is not the fixed 2-D sin-cos table our "
                          "Encoder uses; convert the encoder alone with mim_jax.convert.layouts.import_vit "
                          "(a ViT with learned positions, usable as a teacher)")
    layout, _ = find_layout(sd.keys())
    if layout not in (TIMM, HF_VIT):
        raise ConfigError(f"a decoder next to a {layout.name} encoder is not an MAE checkpoint")
    dims, decoder = import_decoder(sd, hf_config, decoder_heads)
    return arch, dims, {"encoder": encoder, "decoder": decoder}
