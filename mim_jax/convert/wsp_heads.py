"""The WSP head (Linear(D, D) - Tanh - Linear(D, C)) <-> timm / MAWS-layout tensors.

timm's ViT names this head `pre_logits.fc` (the D x D layer, followed by Tanh; timm's `representation_size`) and
`head` (the classifier), next to the encoder keys `MAWS's model builder (a timm VisionTransformer) loads. Our head
stores the classes padded to a multiple of 128 (models/heads.py); files and converted trees hold only the real
classes (`unpad_head` / `pad_head` move between the two).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from mim_jax.errors import ConfigError
from mim_jax.models.heads import padded_classes

HEAD_KEYS = ("pre_logits.fc.weight", "pre_logits.fc.bias", "head.weight", "head.bias")


def head_state_dict(head: dict) -> dict[str, np.ndarray]:
    """timm tensors (float32) of a WSP head params tree (real classes, see unpad_head)."""
    pre, out = head["pre_logits"], head["out"]
    sd = {"pre_logits.fc.weight": np.asarray(pre["kernel"]).T, "pre_logits.fc.bias": np.asarray(pre["bias"]),
          "head.weight": np.asarray(out["kernel"]).T, "head.bias": np.asarray(out["bias"])}
    return {k: np.ascontiguousarray(v, np.float32) for k, v in sd.items()}  # safetensors writes raw buffers


def unpad_head(head: dict, num_classes: int) -> dict:
    """A WSPHead params tree (classes padded) cut to its first `num_classes` classes (numpy)."""
    out = head["out"]
    return {"pre_logits": {k: np.asarray(v) for k, v in head["pre_logits"].items()},
            "out": {"kernel": np.asarray(out["kernel"])[:, :num_classes], "bias": np.asarray(out["bias"])[:num_classes]}}


def pad_head(head: dict) -> dict:
    """A head tree of real classes padded with zero columns to WSPHead's padded_classes (numpy)."""
    num_classes = head["out"]["bias"].shape[0]
    pad = padded_classes(num_classes) - num_classes
    out = {"kernel": np.pad(head["out"]["kernel"], ((0, 0), (0, pad))), "bias": np.pad(head["out"]["bias"], (0, pad))}
    return {"pre_logits": dict(head["pre_logits"]), "out": out}


def has_head(sd: dict) -> bool:
    """Whether a state dict carries a WSP head (pre_logits.fc and head)."""
    return all(k in sd for k in HEAD_KEYS)


def import_head(sd: dict) -> Optional[dict]:
    """The WSP head params (real classes) of a state dict with timm's pre_logits.fc + head, else None."""
    if not has_head(sd):
        return None
    w1, b1 = np.asarray(sd["pre_logits.fc.weight"], np.float32), np.asarray(sd["pre_logits.fc.bias"], np.float32)
    w2, b2 = np.asarray(sd["head.weight"], np.float32), np.asarray(sd["head.bias"], np.float32)
    if w1.shape[0] != w1.shape[1] or w2.shape[1] != w1.shape[0]:
        raise ConfigError(f"a WSP head is Linear(D, D) - Tanh - Linear(D, C); this file's pre_logits.fc.weight is "
                          f"{tuple(w1.shape)} and head.weight {tuple(w2.shape)}")
    return {"pre_logits": {"kernel": w1.T, "bias": b1}, "out": {"kernel": w2.T, "bias": b2}}
