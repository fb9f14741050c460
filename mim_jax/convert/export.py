"""Export an encoder to timm-compatible safetensors (timm `vit_*` names; fused qkv; [1, 1+N, D] positions)."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import numpy as np

from mim_jax.convert.wsp_heads import head_state_dict
from mim_jax.errors import ConfigError
from mim_jax.models.teachers import ViTArch
from mim_jax.models.vit import sincos_2d


def _linear(tree: dict) -> dict:
    return {"weight": np.asarray(tree["kernel"]).T, "bias": np.asarray(tree["bias"])}


def _block_state(layers: dict, i: int) -> dict:
    """timm tensors of block i from the stacked layers tree."""
    take = lambda x: np.asarray(x[i], np.float32)
    attn = layers["attn"]
    width = attn["query"]["kernel"].shape[1]
    qkv_w = np.concatenate([take(attn[n]["kernel"]).reshape(width, width).T for n in ("query", "key", "value")])
    qkv_b = np.concatenate([take(attn[n]["bias"]).reshape(width) for n in ("query", "key", "value")])
    out = {"norm1.weight": take(layers["norm1"]["scale"]), "norm1.bias": take(layers["norm1"]["bias"]),
           "attn.qkv.weight": qkv_w, "attn.qkv.bias": qkv_b,
           "attn.proj.weight": take(attn["out"]["kernel"]).reshape(width, width).T,
           "attn.proj.bias": take(attn["out"]["bias"]),
           "norm2.weight": take(layers["norm2"]["scale"]), "norm2.bias": take(layers["norm2"]["bias"])}
    for name in ("fc1", "fc2"):
        out[f"mlp.{name}.weight"] = take(layers["mlp"][name]["kernel"]).T
        out[f"mlp.{name}.bias"] = take(layers["mlp"][name]["bias"])
    return out


def timm_state_dict(params: dict, arch: ViTArch) -> dict[str, np.ndarray]:
    """timm ViT state dict (float32 numpy) of an Encoder / TeacherViT params tree without ln_pre or projection."""
    if arch.ln_pre or arch.proj_dim or not arch.patch_bias:
        raise ConfigError("timm export covers MAE-style encoders (patch bias, no ln_pre, no output projection); "
                          "this is a CLIP-style tower: keep it in the mim_jax format (--format=mim_jax)")
    pos = params["pos_embed"] if arch.positions == "learned" else sincos_2d(arch.width, arch.grid_size)
    sd = {"cls_token": np.asarray(params["cls_token"], np.float32).reshape(1, 1, arch.width),
          "pos_embed": np.asarray(pos, np.float32).reshape(1, -1, arch.width),
          "patch_embed.proj.weight": np.asarray(params["patch_embed"]["kernel"], np.float32).transpose(3, 2, 0, 1),
          "patch_embed.proj.bias": np.asarray(params["patch_embed"]["bias"], np.float32),
          "norm.weight": np.asarray(params["norm"]["scale"], np.float32),
          "norm.bias": np.asarray(params["norm"]["bias"], np.float32)}
    for i in range(arch.depth):
        sd.update({f"blocks.{i}.{k}": v for k, v in _block_state(params["blocks"]["layers"], i).items()})
    return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}


def export_timm(params: dict, arch: ViTArch, path: str, head: Optional[dict] = None) -> None:
    """Write `params` as a timm-compatible safetensors file (architecture in the metadata); with `head` (a WSP
    head of real classes) also timm's pre_logits.fc + head (the MAWS / SWAG classifier)."""
    from safetensors.numpy import save_file
    sd = timm_state_dict(params, arch)
    if head is not None:
        sd.update(head_state_dict(head))
    save_file(sd, path, metadata={"mim_jax_arch": json.dumps(dataclasses.asdict(arch))})
