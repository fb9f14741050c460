"""PyTorch ViT state-dict layouts (timm/MAE/MAWS/DINO, OpenAI CLIP, HF CLIP, HF ViT/ViTMAE) <-> our param trees.

A layout names every tensor of a ViT in one checkpoint family. `import_vit` finds the layout and the
architecture from the keys and shapes, checks the key set, and returns a `ViTArch` and a numpy params
tree of `TeacherViT` (which is the `Encoder` tree when the positions are the fixed sin-cos table).
Transforms: torch Linear [out, in] -> kernel [in, out]; a fused qkv [3D, D] -> query/key/value kernels
[D, heads, head_dim]; conv [D, C, p, p] -> kernel [p, p, C, D]; blocks stacked on a leading layers axis.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

import numpy as np

from mim_jax.errors import ConfigError
from mim_jax.models.teachers import CLIP_MEAN_STD, ViTArch
from mim_jax.models.vit import ACTIVATIONS, VIT_SIZES, sincos_2d

SINCOS_ATOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Layout:
    """Tensor names of one checkpoint family (relative to a prefix found from `anchor`)."""
    name: str
    anchor: str                        # key of the patch-embedding weight; whatever precedes it is the prefix
    cls: str
    pos: str
    patch_bias: Optional[str]
    ln_pre: Optional[str]              # module name; '.weight' / '.bias' are appended
    block: str                         # with {i}
    norm1: str
    qkv: Optional[str]                 # fused qkv module (weight [3D, D]); None: split q/k/v
    qkv_split: tuple = ()              # (q, k, v) module names when not fused
    out: str = ""
    norm2: str = ""
    fc1: str = ""
    fc2: str = ""
    norm: str = ""
    proj: Optional[str] = None         # root-level name of the output projection, if the family has one
    proj_is_linear: bool = False       # HF visual_projection: Linear [P, D]; OpenAI visual.proj: [D, P]
    ln_eps: float = 1e-6
    activation: str = "gelu"
    mean_std: Optional[tuple] = None   # None: ImageNet
    qkv_weight_suffix: str = ".weight"
    qkv_bias_suffix: str = ".bias"


TIMM = Layout("timm (official MAE, MAWS, DINO)", "patch_embed.proj.weight", "cls_token", "pos_embed",
              "patch_embed.proj.bias", None, "blocks.{i}.", "norm1", "attn.qkv", out="attn.proj", norm2="norm2",
              fc1="mlp.fc1", fc2="mlp.fc2", norm="norm")
OPENAI_CLIP = Layout("OpenAI / open_clip CLIP visual", "conv1.weight", "class_embedding", "positional_embedding",
                     None, "ln_pre", "transformer.resblocks.{i}.", "ln_1", "attn.in_proj", out="attn.out_proj",
                     norm2="ln_2", fc1="mlp.c_fc", fc2="mlp.c_proj", norm="ln_post", proj="visual.proj",
                     ln_eps=1e-5, activation="quick_gelu", mean_std=CLIP_MEAN_STD, qkv_weight_suffix="_weight",
                     qkv_bias_suffix="_bias")
HF_CLIP = Layout("HF CLIPVisionModel", "embeddings.patch_embedding.weight", "embeddings.class_embedding",
                 "embeddings.position_embedding.weight", None, "pre_layrnorm", "encoder.layers.{i}.", "layer_norm1",
                 None, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), out="self_attn.out_proj",
                 norm2="layer_norm2", fc1="mlp.fc1", fc2="mlp.fc2", norm="post_layernorm",
                 proj="visual_projection.weight", proj_is_linear=True, ln_eps=1e-5, activation="quick_gelu",
                 mean_std=CLIP_MEAN_STD)
HF_VIT = Layout("HF ViTModel / ViTMAE", "embeddings.patch_embeddings.projection.weight", "embeddings.cls_token",
                "embeddings.position_embeddings", "embeddings.patch_embeddings.projection.bias", None,
                "encoder.layer.{i}.", "layernorm_before", None,
                ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
                out="attention.output.dense", norm2="layernorm_after", fc1="intermediate.dense", fc2="output.dense",
                norm="layernorm")
LAYOUTS = (TIMM, OPENAI_CLIP, HF_CLIP, HF_VIT)
# Tensors a family carries that the ViT does not use (buffers, pooler heads, the text tower, a decoder, a
# classifier / WSP head: convert/wsp_heads.py reads the latter).
IGNORED = re.compile(r"(^|\.)(position_ids|pooler\..*|logit_scale|text_model\..*|text_projection.*|"
                     r"decoder.*|mask_token|head\..*|fc_norm\..*|pre_logits\..*)$")


def find_layout(keys) -> tuple[Layout, str]:
    """(layout, prefix) whose patch-embedding key occurs in `keys`; ConfigError listing the families if none."""
    for layout in LAYOUTS:
        for key in keys:
            if key.endswith(layout.anchor):
                return layout, key[: -len(layout.anchor)]
    raise ConfigError(f"no known ViT layout in this checkpoint (first keys: {sorted(keys)[:6]}); supported: "
                      f"{[l.name for l in LAYOUTS]}, identified by keys ending in {[l.anchor for l in LAYOUTS]}")


def _wb(module: str) -> list[str]:
    return [module + ".weight", module + ".bias"]


def block_keys(layout: Layout, i: int) -> list[str]:
    """Names of block i's tensors."""
    b = layout.block.format(i=i)
    qkv = ([b + layout.qkv + layout.qkv_weight_suffix, b + layout.qkv + layout.qkv_bias_suffix] if layout.qkv
           else [k for m in layout.qkv_split for k in _wb(b + m)])
    return _wb(b + layout.norm1) + qkv + [k for m in (layout.out, layout.norm2, layout.fc1, layout.fc2)
                                           for k in _wb(b + m)]


def expected_keys(layout: Layout, prefix: str, depth: int, proj: bool) -> set[str]:
    """Every key a checkpoint of `layout` with `depth` blocks must hold."""
    keys = [layout.anchor, layout.cls, layout.pos] + _wb(layout.norm)
    keys += [layout.patch_bias] if layout.patch_bias else []
    keys += _wb(layout.ln_pre) if layout.ln_pre else []
    keys += [k for i in range(depth) for k in block_keys(layout, i)]
    return {prefix + k for k in keys} | ({layout.proj} if proj and layout.proj else set())


def closest_size(width: int, depth: int) -> str:
    """Name of the VIT_SIZES entry nearest to (width, depth)."""
    return min(VIT_SIZES, key=lambda n: abs(VIT_SIZES[n].width - width) / width
               + abs(VIT_SIZES[n].depth - depth) / max(depth, 1))


def count_blocks(layout: Layout, prefix: str, keys) -> int:
    """Number of blocks: 1 + the largest block index among the keys."""
    pattern = re.compile(re.escape(prefix + layout.block).replace(r"\{i\}", r"(\d+)"))
    found = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
    return 1 + max(found) if found else 0


def check_keys(keys, layout: Layout, prefix: str, arch: ViTArch, variant: str = "") -> None:
    """ConfigError listing missing and unexpected keys (and the closest size) unless they fit the architecture."""
    depth = VIT_SIZES[variant].depth if variant else arch.depth
    expected = expected_keys(layout, prefix, depth, bool(arch.proj_dim))
    present = {k for k in keys if k.startswith(prefix) or k == layout.proj}
    missing = sorted(expected - present)
    unexpected = sorted(k for k in present - expected if not IGNORED.search(k[len(prefix):]))
    wrong_size = variant and (VIT_SIZES[variant].width, VIT_SIZES[variant].patch_size) != (arch.width,
                                                                                           arch.patch_size)
    if missing or unexpected or wrong_size:
        chosen = f"the chosen architecture {variant}" if variant else f"a {layout.name} ViT of depth {depth}"
        raise ConfigError(
            f"checkpoint keys do not match {chosen}: {len(missing)} missing {missing[:6]}, {len(unexpected)} "
            f"unexpected {unexpected[:6]}; the checkpoint holds width {arch.width}, depth {arch.depth}, patch "
            f"{arch.patch_size}: closest architecture in VIT_SIZES is {closest_size(arch.width, arch.depth)}")


def infer_heads(width: int, heads: int, hf_config: Optional[dict], variant: str) -> int:
    """Attention heads: explicit, HF config, the variant, or the size table entry of that width."""
    if heads:
        return heads
    if hf_config and hf_config.get("num_attention_heads"):
        return int(hf_config["num_attention_heads"])
    if variant:
        return VIT_SIZES[variant].heads
    for size in VIT_SIZES.values():
        if size.width == width:
            return size.heads
    raise ConfigError(f"cannot infer the number of attention heads of a width-{width} ViT; set teacher.heads "
                      f"(or --heads) to it")


def _pos_table(pos: np.ndarray) -> np.ndarray:
    return pos.reshape(-1, pos.shape[-1])


def infer_arch(sd: dict, layout: Layout, prefix: str, heads: int = 0, hf_config: Optional[dict] = None,
               variant: str = "") -> ViTArch:
    """The ViTArch of a state dict of `layout` (sizes from shapes; eps/activation from the layout or HF config)."""
    conv = sd[prefix + layout.anchor]
    width, patch = conv.shape[0], conv.shape[-1]
    pos = _pos_table(sd[prefix + layout.pos])
    grid = int(round((pos.shape[0] - 1) ** 0.5))
    depth = count_blocks(layout, prefix, sd)
    fc1 = sd.get(prefix + layout.block.format(i=0) + layout.fc1 + ".weight")
    mlp_dim = fc1.shape[0] if fc1 is not None else 0
    proj = sd.get(layout.proj) if layout.proj else None
    proj_dim = 0 if proj is None else (proj.shape[0] if layout.proj_is_linear else proj.shape[1])
    ln_eps, activation = layout.ln_eps, layout.activation
    if hf_config:
        ln_eps = float(hf_config.get("layer_norm_eps", ln_eps))
        activation = hf_config.get("hidden_act", activation)
        if activation not in ACTIVATIONS:
            raise ConfigError(f"hidden_act={activation!r} in the HF config is not supported; use {ACTIVATIONS}")
    sincos = grid * grid + 1 == pos.shape[0] and width % 4 == 0 and np.allclose(
        pos, sincos_2d(width, grid), atol=SINCOS_ATOL)
    return ViTArch(width, depth, infer_heads(width, heads, hf_config, variant), mlp_dim, patch, grid,
                   ln_eps=ln_eps, activation=activation, patch_bias=layout.patch_bias is not None,
                   positions="sincos" if sincos else "learned", ln_pre=layout.ln_pre is not None,
                   proj_dim=proj_dim, mean_std=layout.mean_std or ViTArch.mean_std)


def _linear(sd, name):
    return {"kernel": sd[name + ".weight"].T, "bias": sd[name + ".bias"]}


def _norm(sd, name):
    return {"scale": sd[name + ".weight"], "bias": sd[name + ".bias"]}


def _block(sd: dict, layout: Layout, prefix: str, i: int, heads: int) -> dict:
    b = prefix + layout.block.format(i=i)
    if layout.qkv:
        w, bias = sd[b + layout.qkv + layout.qkv_weight_suffix], sd[b + layout.qkv + layout.qkv_bias_suffix]
        width = w.shape[1]
        parts = [(w[j * width:(j + 1) * width], bias[j * width:(j + 1) * width]) for j in range(3)]
    else:
        parts = [(sd[b + m + ".weight"], sd[b + m + ".bias"]) for m in layout.qkv_split]
        width = parts[0][0].shape[1]
    hd = width // heads
    attn = {name: {"kernel": w.T.reshape(width, heads, hd), "bias": bias.reshape(heads, hd)}
            for name, (w, bias) in zip(("query", "key", "value"), parts)}
    out_w = sd[b + layout.out + ".weight"]
    attn["out"] = {"kernel": out_w.T.reshape(heads, hd, width), "bias": sd[b + layout.out + ".bias"]}
    return {"attn": attn, "mlp": {"fc1": _linear(sd, b + layout.fc1), "fc2": _linear(sd, b + layout.fc2)},
            "norm1": _norm(sd, b + layout.norm1), "norm2": _norm(sd, b + layout.norm2)}


def stack_blocks(blocks: list[dict]) -> dict:
    """Per-block trees -> one tree with a leading layers axis (nn.scan's layout)."""
    if isinstance(blocks[0], dict):
        return {k: stack_blocks([b[k] for b in blocks]) for k in blocks[0]}
    return np.stack(blocks)


def vit_params(sd: dict, layout: Layout, prefix: str, arch: ViTArch) -> dict:
    """Numpy params tree of TeacherViT(arch) from a state dict of `layout` (float32)."""
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items()}
    conv = sd[prefix + layout.anchor]
    params = {"patch_embed": {"kernel": conv.transpose(2, 3, 1, 0)},
              "cls_token": sd[prefix + layout.cls].reshape(1, 1, arch.width),
              "blocks": {"layers": stack_blocks([_block(sd, layout, prefix, i, arch.heads)
                                                 for i in range(arch.depth)])},
              "norm": _norm(sd, prefix + layout.norm)}
    if layout.patch_bias:
        params["patch_embed"]["bias"] = sd[prefix + layout.patch_bias]
    if arch.positions == "learned":
        params["pos_embed"] = _pos_table(sd[prefix + layout.pos])
    if arch.ln_pre:
        params["ln_pre"] = _norm(sd, prefix + layout.ln_pre)
    if arch.proj_dim:
        proj = sd[layout.proj]
        params["proj"] = proj.T if layout.proj_is_linear else proj
    return params


def import_vit(sd: dict, hf_config: Optional[dict] = None, heads: int = 0, variant: str = "") -> tuple[ViTArch, dict]:
    """(ViTArch, numpy params) of the ViT in a PyTorch state dict of any supported layout; checks the keys."""
    if variant and variant not in VIT_SIZES:
        raise ConfigError(f"variant={variant!r} is not a known ViT size; use one of {sorted(VIT_SIZES)}")
    layout, prefix = find_layout(sd.keys())
    arch = infer_arch(sd, layout, prefix, heads, hf_config, variant)
    check_keys(sd.keys(), layout, prefix, arch, variant)
    return arch, vit_params(sd, layout, prefix, arch)
