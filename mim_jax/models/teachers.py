"""Frozen teacher encoders for feature targets (Lu et al.): CLIP and DINO ViTs, or an earlier MAE run's encoder.

One module, `TeacherViT`, covers them through a `ViTArch`: learned or fixed sin-cos positions, QuickGELU or
exact GELU, LayerNorm eps, patch bias, CLIP's ln_pre and output projection. Its parameter tree is that of
`mim_jax.models.vit.Encoder` plus `pos_embed` (learned positions), `ln_pre` and `proj` when present, with
the same logical axis names, so a teacher shards like the encoder.

Grid mismatch: the teacher always runs on the student's patch grid. Its input is resized (bicubic, jax)
to grid * teacher_patch pixels, and a learned position table is interpolated to that grid once, when the
weights are loaded, with PyTorch's bicubic (`F.interpolate(mode='bicubic', align_corners=False)`, a=-0.75,
as HF transformers / timm / DINO do); `jax.image.resize`'s bicubic (Keys a=-0.5) would differ slightly.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.errors import ConfigError
from mim_jax.models.vit import (
    LN_EPS,
    BlockStack,
    PatchEmbed,
    layer_norm,
    partitioned,
    sincos_2d,
)

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
FEATURES = ("final", "last_block")


@dataclasses.dataclass(frozen=True)
class ViTArch:
    """Everything that fixes a ViT's parameter tree and forward (sizes, positions, norms, head)."""
    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch_size: int
    grid_size: int                     # patches per side the position table was trained for
    ln_eps: float = LN_EPS
    activation: str = "gelu"           # gelu | quick_gelu
    patch_bias: bool = True
    positions: str = "sincos"          # sincos (fixed, MAE) | learned (CLIP, DINO, MAWS)
    ln_pre: bool = False               # CLIP: LayerNorm after adding positions
    proj_dim: int = 0                  # CLIP: ln_post output projected to proj_dim for every token; 0 = none
    mean_std: tuple = IMAGENET_MEAN_STD  # input normalization the weights were trained with

    def feature_dim(self, feature: str) -> int:
        """Width of the teacher features of kind `feature` ('final' includes the projection)."""
        return self.proj_dim if feature == "final" and self.proj_dim else self.width

    def at_grid(self, grid_size: int) -> "ViTArch":
        """The same architecture on another patch grid."""
        return dataclasses.replace(self, grid_size=grid_size)


CLIP_B16 = ViTArch(768, 12, 12, 3072, 16, 14, ln_eps=1e-5, activation="quick_gelu", patch_bias=False,
                   positions="learned", ln_pre=True, proj_dim=512, mean_std=CLIP_MEAN_STD)
DINO_B16 = ViTArch(768, 12, 12, 3072, 16, 14, positions="learned")
DEFAULT_ARCHS = {"clip": CLIP_B16, "dino": DINO_B16}


class TeacherViT(nn.Module):
    """ViT forward on all 1 + grid^2 tokens -> features [B, 1+N, feature_dim] (CLS first)."""
    arch: ViTArch
    feature: str = "final"             # final: after the final norm (and projection); last_block: before it
    dtype: jnp.dtype = jnp.bfloat16
    scan_unroll: int = 1               # passed to BlockStack (= depth: loop-free, for exact FLOP counts)

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """[B, H, W, 3] normalized images, H = W = grid * patch -> [B, 1+N, D_feature]."""
        a = self.arch
        x = PatchEmbed(a.width, a.patch_size, self.dtype, use_bias=a.patch_bias, name="patch_embed")(images)
        cls = self.param("cls_token", partitioned(nn.initializers.normal(0.02), (None, None, "embed")),
                         (1, 1, a.width), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (x.shape[0], 1, a.width)), x], axis=1)
        if a.positions == "learned":
            pos = self.param("pos_embed", partitioned(nn.initializers.normal(0.02), (None, "embed")),
                             (1 + a.grid_size ** 2, a.width), jnp.float32)
        else:
            pos = jnp.asarray(sincos_2d(a.width, a.grid_size))
        x = x + pos.astype(self.dtype)[None]
        if a.ln_pre:
            x = layer_norm(self.dtype, "ln_pre", a.ln_eps)(x)
        x = nn.with_logical_constraint(x, ("batch", "seq", "act_embed"))
        x = BlockStack(a.width, a.depth, a.heads, a.mlp_dim, "none", self.dtype, ln_eps=a.ln_eps,
                       scan_unroll=self.scan_unroll, activation=a.activation, name="blocks")(x)
        if self.feature == "last_block":
            return x
        x = layer_norm(self.dtype, "norm", a.ln_eps)(x)
        if a.proj_dim:
            kernel = self.param("proj", partitioned(nn.initializers.normal(a.width ** -0.5), ("embed", None)),
                                (a.width, a.proj_dim), jnp.float32)
            x = x @ kernel.astype(self.dtype)
        return x


def teacher_image_size(arch: ViTArch, student_grid: int) -> int:
    """Pixels per side at which the teacher sees the student's patch grid."""
    return student_grid * arch.patch_size


def teacher_inputs(images_uint8: jax.Array, arch: ViTArch, image_size: int) -> jax.Array:
    """uint8 [B, H, W, 3] -> the teacher's normalized input, bicubically resized to image_size when needed."""
    x = images_uint8.astype(jnp.float32) / 255.0
    if x.shape[1] != image_size or x.shape[2] != image_size:
        x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), method="bicubic")
    mean, std = (jnp.asarray(v, jnp.float32) for v in arch.mean_std)
    return (x - mean) / std


def torch_bicubic_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """[out, in] float64 weights of PyTorch's 1-D bicubic resize (align_corners=False, clamped borders)."""
    def cubic(t):
        t = np.abs(t)
        return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                        np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        src = (i + 0.5) * in_size / out_size - 0.5
        base = math.floor(src)
        for tap in range(base - 1, base + 3):
            weights[i, min(max(tap, 0), in_size - 1)] += cubic(src - tap)
    return weights


def interpolate_positions(table: np.ndarray, new_grid: int) -> np.ndarray:
    """Learned [1 + g*g, D] position table -> [1 + new*new, D]: CLS row kept, grid resized bicubically."""
    grid = int(round(math.sqrt(table.shape[0] - 1)))
    if grid * grid != table.shape[0] - 1:
        raise ConfigError(f"position table of {table.shape[0]} rows is not 1 + a square grid")
    if grid == new_grid:
        return table
    w = torch_bicubic_matrix(grid, new_grid)
    patch = table[1:].astype(np.float64).reshape(grid, grid, -1)
    resized = np.einsum("ij,jkd,lk->ild", w, patch, w).reshape(new_grid * new_grid, -1)
    return np.concatenate([table[:1], resized.astype(table.dtype)], axis=0)


def params_at_grid(params: dict, arch: ViTArch, grid_size: int) -> dict:
    """Teacher params moved to `grid_size` (learned positions interpolated; sin-cos needs nothing)."""
    if arch.positions != "learned" or arch.grid_size == grid_size:
        return params
    return dict(params, pos_embed=interpolate_positions(np.asarray(params["pos_embed"]), grid_size))


def abstract_teacher(teacher: TeacherViT, mesh, rules) -> tuple[Any, Any]:
    """(ShapeDtypeStructs with shardings, shardings) of the teacher params, from its logical axis names."""
    size = teacher.arch.grid_size * teacher.arch.patch_size
    return abstract_params(teacher, size, teacher.dtype, mesh, rules)


def abstract_params(module: nn.Module, image_size: int, dtype, mesh, rules) -> tuple[Any, Any]:
    """(ShapeDtypeStructs in `dtype` with shardings, shardings) of an image model's params, from its logical axes."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda x: module.init(jax.random.key(0), x)["params"], images)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
    abstract = jax.tree.map(lambda b, s: jax.ShapeDtypeStruct(b.shape, dtype, sharding=s), nn.unbox(boxed),
                            shardings)
    return abstract, shardings


def place_teacher_params(host_params: Any, abstract: Any, what: str = "teacher") -> Any:
    """Host (numpy) `what` params -> global arrays with the abstract tree's shapes, dtype and shardings."""
    flat_abstract = jax.tree_util.tree_flatten_with_path(abstract)[0]
    flat_host = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(host_params)[0]}
    expected = {jax.tree_util.keystr(p) for p, _ in flat_abstract}
    if set(flat_host) != expected:
        missing, unexpected = sorted(expected - set(flat_host)), sorted(set(flat_host) - expected)
        raise ConfigError(f"{what} weights do not fit the {what} architecture: missing {missing[:8]}, "
                          f"unexpected {unexpected[:8]}")
    leaves = []
    for path, a in flat_abstract:
        value = np.asarray(flat_host[jax.tree_util.keystr(path)])
        if value.shape != a.shape:
            raise ConfigError(f"{what} weight {jax.tree_util.keystr(path)} has shape {value.shape}, "
                              f"the {what} architecture needs {a.shape}")
        value = value.astype(a.dtype)
        leaves.append(jax.make_array_from_callback(a.shape, a.sharding, lambda idx, v=value: v[idx]))
    return jax.tree.unflatten(jax.tree.structure(abstract), leaves)


def encoder_arch(model_cfg, heads: Optional[int] = None) -> ViTArch:
    """The ViTArch of this project's MAE encoder for `config.model` (fixed sin-cos positions, eps 1e-6)."""
    from mim_jax.models.vit import resolve_dims
    d = resolve_dims(model_cfg)
    return ViTArch(d["width"], d["depth"], heads or d["heads"], d["mlp_dim"], d["patch_size"],
                   model_cfg.image_size // d["patch_size"])
