"""Read any supported weights file into (architecture, decoder dims, params): the library side of `mim_jax.convert`.

Sources: a mim_jax-format file, our timm exports (their architecture is recorded), PyTorch `.pth` / `.pt` /
`.bin` state dicts (read with weights_only=True), safetensors, and HF model directories; the layout is
detected from the keys (official MAE / MAWS / DINO / timm, OpenAI and HF CLIP, HF ViT / ViTMAE).
"""
from __future__ import annotations

import os

from mim_jax.convert import native
from mim_jax.convert.checkpoint_files import read_checkpoint
from mim_jax.convert.mae_checkpoints import import_mae
from mim_jax.convert.wsp_heads import import_head


def load_any(source: str, heads: int = 0, variant: str = "", decoder_heads: int = 0):
    """(ViTArch, decoder dims or None, params {'encoder'[, 'decoder'][, 'head']}) of a weights file or HF directory.

    A WSP head (timm `pre_logits.fc` + `head`, MAWS layout) comes back as params['head'] (real classes; pad_head).
    """
    path = os.path.expanduser(source)
    if os.path.isfile(path) and native.is_native(path):
        arch, params = native.load_native(path)
        return arch, None, params
    if not heads and path.endswith(".safetensors") and os.path.isfile(path):
        stored = native.read_arch(path)  # our timm exports record their architecture
        heads = stored.heads if stored else 0
    sd, hf_config = read_checkpoint(path)
    arch, decoder, params = import_mae(sd, hf_config, heads, variant, decoder_heads)
    head = import_head(sd)
    if head is not None:
        params["head"] = head
    return arch, decoder, params
