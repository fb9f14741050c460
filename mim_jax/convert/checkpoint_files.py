"""Read PyTorch checkpoints without executing pickled code: safetensors, or torch.load(weights_only=True).

Accepted: `.safetensors` files, HF model directories (config.json + model.safetensors or pytorch_model.bin),
and `.pth` / `.pt` / `.bin` state dicts (also wrapped as {'model': ...} like official MAE, or
{'state_dict': ...}). torch is imported only here and only for .pth-style files.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from mim_jax.errors import ConfigError

WRAPPER_KEYS = ("model", "state_dict", "model_state", "module")
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as numpy arrays (bfloat16, which numpy lacks, read as float32)."""
    from safetensors import safe_open
    out = {}
    with safe_open(path, framework="np") as f, safe_open(path, framework="flax") as f_jax:
        for key in f.keys():
            bf16 = f.get_slice(key).get_dtype() == "BF16"  # numpy has no bfloat16: read those through jax
            out[key] = np.asarray(f_jax.get_tensor(key), np.float32) if bf16 else np.asarray(f.get_tensor(key))
    return out


def read_torch(path: str) -> dict[str, np.ndarray]:
    """A .pth state dict via torch.load(weights_only=True); a pickle that needs code execution is refused."""
    try:
        import torch
    except ImportError as err:
        raise ConfigError(f"{path}: reading .pth/.pt files needs torch: pip install 'mim_jax[convert]'") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # UnpicklingError for unsafe pickles; RuntimeError for TorchScript / corrupt files
        reason = " ".join(str(err).split())[:300]
        raise ConfigError(f"{path}: refused to load: it is not a plain weights-only state dict (torch.load with "
                          f"weights_only=True said: {reason}); re-save it as a state dict "
                          f"(torch.save(model.state_dict(), f)) or as safetensors") from None
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and _is_state_dict(obj[key]):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise ConfigError(f"{path}: holds no state dict of tensors (top-level keys: "
                          f"{sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})")
    return {k: v.detach().float().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def _is_state_dict(d: dict) -> bool:
    return any(hasattr(v, "detach") for v in d.values())


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], Optional[dict]]:
    """(state dict of float32 numpy arrays, HF config.json dict or None) of a file or an HF model directory."""
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such file or directory; check the checkpoint path")
    hf_config = None
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        if os.path.isfile(config_path):
            with open(config_path) as f:
                hf_config = json.load(f)
            hf_config = hf_config.get("vision_config", hf_config)  # a full CLIPModel keeps it nested
        files = [os.path.join(path, n) for n in HF_WEIGHT_FILES if os.path.isfile(os.path.join(path, n))]
        if not files:
            raise ConfigError(f"{path}: a model directory needs one of {HF_WEIGHT_FILES} (sharded HF checkpoints "
                              f"are not supported: merge them first)")
        path = files[0]
    if path.endswith(".safetensors"):
        return read_safetensors(path), hf_config
    return read_torch(path), hf_config
