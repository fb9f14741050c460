"""The mim_jax weights format: safetensors with '/'-joined param paths and the ViTArch (+ decoder) as metadata."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import numpy as np

from mim_jax.models.teachers import ViTArch

ARCH_KEY = "mim_jax_arch"
DECODER_KEY = "mim_jax_decoder"


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict -> {'a/b/c': array}."""
    out = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: np.asarray(v)})
    return out


def unflatten(flat: dict) -> dict:
    """{'a/b/c': array} -> nested dict."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def save_native(params: dict, arch: ViTArch, path: str, decoder: Optional[object] = None) -> None:
    """Write a params tree ({'encoder': ...[, 'decoder': ...]}) with its architecture to `path`."""
    from safetensors.numpy import save_file
    meta = {ARCH_KEY: json.dumps(dataclasses.asdict(arch))}
    if decoder is not None:
        meta[DECODER_KEY] = json.dumps(dataclasses.asdict(decoder))
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in flatten(params).items()}, path, metadata=meta)


def read_arch(path: str) -> Optional[ViTArch]:
    """The ViTArch stored in a mim_jax-format file; None for any other safetensors file."""
    from safetensors import safe_open
    with safe_open(path, framework="np") as f:
        meta = f.metadata() or {}
    if ARCH_KEY not in meta:
        return None
    fields = json.loads(meta[ARCH_KEY])
    fields["mean_std"] = tuple(tuple(v) for v in fields["mean_std"])
    return ViTArch(**fields)


def is_native(path: str) -> bool:
    """Whether `path` is a mim_jax-format safetensors file (not a timm export, which also has the metadata)."""
    from safetensors import safe_open
    if not path.endswith(".safetensors"):
        return False
    with safe_open(path, framework="np") as f:
        return any(k.startswith("encoder/") for k in f.keys())


def load_native(path: str) -> tuple[ViTArch, dict]:
    """(ViTArch, params tree) of a mim_jax-format file."""
    from mim_jax.convert.checkpoint_files import read_safetensors
    return read_arch(path), unflatten(read_safetensors(path))
