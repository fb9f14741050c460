"""ViT encoder (MAE flavour): size table, pre-LN blocks stacked with scan, fixed 2-D sin-cos positions.

Every parameter dimension carries a logical axis name (see `mim_jax.parallel.sharding`):
  embed, mlp, heads, head_dim, patch, layers; activations carry (batch, seq, act_embed).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ViTSize:
    """Width / depth / heads / MLP dim / patch of one encoder size."""
    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch_size: int


# CPU sizes (Ti, S) and the paper sizes of MAWS Table 1.
VIT_SIZES: dict[str, ViTSize] = {
    "Ti/16": ViTSize(192, 12, 3, 768, 16),
    "S/16": ViTSize(384, 12, 6, 1536, 16),
    "B/16": ViTSize(768, 12, 12, 3072, 16),
    "L/16": ViTSize(1024, 24, 16, 4096, 16),
    "H/14": ViTSize(1280, 32, 16, 5120, 14),
    "2B/14": ViTSize(2560, 24, 32, 10240, 14),
    "6.5B/14": ViTSize(4096, 32, 32, 16384, 14),
}

REMAT_POLICIES = ("none", "full", "save_dots")
LN_EPS = 1e-6
# model.attention -> `implementation=` of jax.nn.dot_product_attention ("auto": None, jax picks; XLA in jax 0.10).
ATTENTION_IMPLEMENTATIONS = {"xla": "xla", "cudnn": "cudnn", "auto": None}


def lookup_size(variant: str) -> ViTSize:
    """Size table entry for `variant`, with an error listing valid names."""
    if variant not in VIT_SIZES:
        raise ConfigError(f"model.variant={variant!r} is not a known ViT size; use one of {sorted(VIT_SIZES)}")
    return VIT_SIZES[variant]


def sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
    """1-D sin-cos embedding [len(positions), embed_dim]: sin half then cos half (MAE convention)."""
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0))
    angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(embed_dim: int, grid_size: int, cls_token: bool = True) -> np.ndarray:
    """Fixed 2-D sin-cos position table [(1+)g*g, D] as in MAE; the CLS row is zero.

    The first half of the channels encodes the column index, the second half the row index,
    rows in raster order (row-major over the patch grid).
    """
    if embed_dim % 4:
        raise ConfigError(f"model.width={embed_dim}: must be a multiple of 4 for 2-D sin-cos positions")
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    table = np.concatenate([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, embed_dim)), table], axis=0)
    return table.astype(np.float32)


def xavier_uniform(in_axis=-2, out_axis=-1, fan_scale: float = 1.0):
    """Xavier-uniform init; `fan_scale` rescales the variance (0.5 makes split q/k/v match a fused qkv)."""
    return nn.initializers.variance_scaling(fan_scale, "fan_avg", "uniform", in_axis=in_axis, out_axis=out_axis)


def partitioned(init, names: tuple):
    """Attach logical axis names to an initializer."""
    return nn.with_logical_partitioning(init, names)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> linear projection (a strided conv in PyTorch), xavier on the flat kernel."""
    width: int
    patch_size: int
    dtype: jnp.dtype = jnp.float32
    use_bias: bool = True  # CLIP's conv1 has none

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        """[B, H, W, C] images -> [B, N, width] tokens in raster order."""
        p = self.patch_size
        b, h, w, c = images.shape
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not divisible by patch_size {p}")
        kernel = self.param(
            "kernel", partitioned(xavier_uniform(in_axis=(0, 1, 2), out_axis=3), (None, None, None, "embed")),
            (p, p, c, self.width), jnp.float32)
        patches = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, (h // p) * (w // p), p * p * c).astype(self.dtype)
        flat_kernel = kernel.reshape(p * p * c, self.width).astype(self.dtype)
        if not self.use_bias:
            return patches @ flat_kernel
        bias = self.param("bias", partitioned(nn.initializers.zeros, ("embed",)), (self.width,), jnp.float32)
        return patches @ flat_kernel + bias.astype(self.dtype)


ACTIVATIONS = ("gelu", "quick_gelu")


def activation_fn(name: str):
    """Exact GELU (MAE, DINO) or QuickGELU x * sigmoid(1.702 x) (OpenAI CLIP)."""
    if name == "gelu":
        return lambda x: nn.gelu(x, approximate=False)
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    raise ConfigError(f"activation {name!r} is not supported; use one of {ACTIVATIONS}")


class MlpBlock(nn.Module):
    """Linear -> activation (exact GELU by default) -> Linear."""
    width: int
    mlp_dim: int
    dtype: jnp.dtype = jnp.float32
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, D] -> [B, T, D]."""
        dense = lambda feats, names, name: nn.Dense(
            feats, dtype=self.dtype, name=name,
            kernel_init=partitioned(xavier_uniform(), names),
            bias_init=partitioned(nn.initializers.zeros, names[-1:]))
        x = dense(self.mlp_dim, ("embed", "mlp"), "fc1")(x)
        x = nn.with_logical_constraint(x, ("batch", "seq", "mlp"))
        x = activation_fn(self.activation)(x)
        return dense(self.width, ("mlp", "embed"), "fc2")(x)


class HeadsDense(nn.Module):
    """Linear map between [.., D] and [.., heads, head_dim] with bias (one of q/k/v, or the output)."""
    heads: int
    head_dim: int
    width: int
    to_heads: bool = True
    fan_scale: float = 1.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, D] -> [B, T, H, hd] when to_heads, else [B, T, H, hd] -> [B, T, D]."""
        if self.to_heads:
            shape, names, axes = (self.width, self.heads, self.head_dim), ("embed", "heads", "head_dim"), (0, (1, 2))
            bias_shape, bias_names, eq = (self.heads, self.head_dim), ("heads", "head_dim"), "btd,dhk->bthk"
        else:
            shape, names, axes = (self.heads, self.head_dim, self.width), ("heads", "head_dim", "embed"), ((0, 1), 2)
            bias_shape, bias_names, eq = (self.width,), ("embed",), "bthk,hkd->btd"
        init = xavier_uniform(in_axis=axes[0], out_axis=axes[1], fan_scale=self.fan_scale)
        kernel = self.param("kernel", partitioned(init, names), shape, jnp.float32)
        bias = self.param("bias", partitioned(nn.initializers.zeros, bias_names), bias_shape, jnp.float32)
        return jnp.einsum(eq, x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


def attention_implementation(name: str) -> Optional[str]:
    """The `implementation=` argument of jax.nn.dot_product_attention for `model.attention=name`."""
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ConfigError(f"model.attention={name!r}; use one of {tuple(ATTENTION_IMPLEMENTATIONS)}")
    return ATTENTION_IMPLEMENTATIONS[name]


def check_attention_platform(name: str, platform: str) -> None:
    """cuDNN attention needs CUDA GPUs: fail early, naming the field, when the devices are `platform`."""
    if name == "cudnn" and platform not in ("gpu", "cuda"):
        raise ConfigError(f"model.attention='cudnn' needs NVIDIA GPUs but this run's devices are {platform}; "
                          f"use --config.model.attention=xla (or auto)")


class Attention(nn.Module):
    """Multi-head self-attention with split q/k/v (biased) and an output projection."""
    width: int
    heads: int
    dtype: jnp.dtype = jnp.float32
    attention: str = "xla"  # key of ATTENTION_IMPLEMENTATIONS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, D] -> [B, T, D]."""
        head_dim = self.width // self.heads
        # fan_scale 0.5: each of q/k/v gets the xavier bound of a fused [D, 3D] qkv kernel.
        proj = lambda name: HeadsDense(self.heads, head_dim, self.width, True, 0.5, self.dtype, name=name)(x)
        q, k, v = proj("query"), proj("key"), proj("value")
        out = jax.nn.dot_product_attention(q, k, v, implementation=attention_implementation(self.attention))
        out = nn.with_logical_constraint(out, ("batch", "seq", "heads", "head_dim"))
        return HeadsDense(self.heads, head_dim, self.width, False, 1.0, self.dtype, name="out")(out)


def layer_norm(dtype, name: str, eps: float = LN_EPS) -> nn.LayerNorm:
    """LayerNorm (eps 1e-6 unless given) with logically named scale and bias."""
    return nn.LayerNorm(epsilon=eps, dtype=dtype, name=name,
                        scale_init=partitioned(nn.initializers.ones, ("embed",)),
                        bias_init=partitioned(nn.initializers.zeros, ("embed",)))


def drop_path(x: jax.Array, rate: jax.Array, rng: jax.Array) -> jax.Array:
    """Stochastic depth: zero each sample's residual branch with probability `rate`, scale the rest by 1/(1-rate)."""
    keep_prob = 1.0 - rate
    keep = jax.random.uniform(rng, (x.shape[0],) + (1,) * (x.ndim - 1)) < keep_prob
    return jnp.where(keep, x / keep_prob.astype(x.dtype), jnp.zeros_like(x))


class Block(nn.Module):
    """Pre-LN transformer block; the (carry, drop-path rate) signature lets nn.scan stack it."""
    width: int
    heads: int
    mlp_dim: int
    dtype: jnp.dtype = jnp.float32
    ln_eps: float = LN_EPS
    activation: str = "gelu"
    use_drop_path: bool = False       # True: `rate` (this layer's drop-path rate) applies, with the 'dropout' rng
    attention: str = "xla"            # passed to Attention

    @nn.compact
    def __call__(self, x: jax.Array, rate=None):
        """One block: x + attn(ln(x)); x + mlp(ln(x)) (residual branches dropped per sample at `rate`)."""
        branch = lambda y: drop_path(y, rate, self.make_rng("dropout")) if self.use_drop_path else y
        norm1, norm2 = layer_norm(self.dtype, "norm1", self.ln_eps), layer_norm(self.dtype, "norm2", self.ln_eps)
        x = x + branch(Attention(self.width, self.heads, self.dtype, self.attention, name="attn")(norm1(x)))
        x = x + branch(MlpBlock(self.width, self.mlp_dim, self.dtype, self.activation, name="mlp")(norm2(x)))
        x = nn.with_logical_constraint(x, ("batch", "seq", "act_embed"))
        return x, None


def _remat_policy(name: str):
    if name not in REMAT_POLICIES:
        raise ConfigError(f"model.remat={name!r}; use one of {REMAT_POLICIES}")
    return {"full": jax.checkpoint_policies.nothing_saveable,
            "save_dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}.get(name)


class BlockStack(nn.Module):
    """`depth` blocks with parameters stacked on a leading 'layers' axis (scan), remat by policy."""
    width: int
    depth: int
    heads: int
    mlp_dim: int
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    scan_unroll: int = 1  # nn.scan's unroll; = depth gives a loop-free program (exact XLA cost analysis)
    ln_eps: float = LN_EPS
    activation: str = "gelu"
    drop_path_rate: float = 0.0  # stochastic depth of the last block (linear from 0 at the first, as in timm)
    attention: str = "xla"       # passed to Attention

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Run all blocks over [B, T, D] tokens; drop path only when `train` and drop_path_rate > 0."""
        block = Block
        if self.remat != "none":
            block = nn.remat(Block, policy=_remat_policy(self.remat), prevent_cse=False)
        use_drop_path = train and self.drop_path_rate > 0
        stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        length=self.depth, unroll=self.scan_unroll,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        rates = jnp.linspace(0.0, self.drop_path_rate, self.depth) if use_drop_path else None
        x, _ = stack(self.width, self.heads, self.mlp_dim, self.dtype, self.ln_eps, self.activation, use_drop_path,
                     self.attention, name="layers")(x, rates)
        return x


class Encoder(nn.Module):
    """ViT encoder: patch embed, optional mask token (SimMIM), positions, optional token subset (MAE), CLS, blocks."""
    width: int
    depth: int
    heads: int
    mlp_dim: int
    patch_size: int
    image_size: int
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    scan_unroll: int = 1  # passed to BlockStack
    drop_path_rate: float = 0.0  # stochastic depth (fine-tuning); 0 leaves pretraining unchanged
    final_norm: bool = True  # False: return the un-normed tokens (MAE fine-tuning's global pool + fc_norm)
    positions: str = "sincos"  # sincos: fixed 2-D table (MAE); learned: a trained [1+N, D] pos_embed (MAWS, DINO)
    ln_eps: float = LN_EPS     # LayerNorm epsilon (imported HF ViTs use 1e-12)
    attention: str = "xla"     # passed to BlockStack (model.attention)

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def prefix_tokens(self) -> int:
        """Tokens before the patch tokens in the output: the CLS token."""
        return 1

    @property
    def output_stride(self) -> int:
        """Pixels per output token side (the patch size)."""
        return self.patch_size

    @nn.compact
    def __call__(self, images: jax.Array, keep_ids: Optional[jax.Array] = None, train: bool = False,
                 token_mask: Optional[jax.Array] = None) -> jax.Array:
        """[B, H, W, C] -> [B, 1 + T, D] after the final norm; T = N, or keep_ids.shape[1] when given.

        token_mask [B, N] (1 = masked, SimMIM): masked patch embeddings become the learned `mask_token`
        before positions are added. The `mask_token` param exists only in models called with a token_mask.
        """
        x = PatchEmbed(self.width, self.patch_size, self.dtype, name="patch_embed")(images)
        if token_mask is not None:
            x = self.replace_masked(x, token_mask)
        pos = self.position_table().astype(self.dtype)
        x = x + pos[None, 1:]
        if keep_ids is not None:
            x = jnp.take_along_axis(x, keep_ids[..., None], axis=1)
        cls = self.param("cls_token", partitioned(nn.initializers.normal(0.02), (None, None, "embed")),
                         (1, 1, self.width), jnp.float32)
        cls = jnp.broadcast_to((cls + pos[None, :1]).astype(self.dtype), (x.shape[0], 1, self.width))
        x = jnp.concatenate([cls, x], axis=1)
        x = nn.with_logical_constraint(x, ("batch", "seq", "act_embed"))
        x = BlockStack(self.width, self.depth, self.heads, self.mlp_dim, self.remat, self.dtype, ln_eps=self.ln_eps,
                       scan_unroll=self.scan_unroll, drop_path_rate=self.drop_path_rate, attention=self.attention,
                       name="blocks")(x, train)
        return layer_norm(self.dtype, "norm", self.ln_eps)(x) if self.final_norm else x

    def replace_masked(self, x: jax.Array, token_mask: jax.Array) -> jax.Array:
        """Tokens [B, N, D] with those where token_mask [B, N] is nonzero replaced by the `mask_token` param."""
        if token_mask.shape != x.shape[:2]:
            raise ValueError(f"token_mask has shape {token_mask.shape}; expected (batch, patches) = {x.shape[:2]}")
        mask_token = self.param("mask_token", partitioned(nn.initializers.normal(0.02), (None, None, "embed")),
                                (1, 1, self.width), jnp.float32)
        return jnp.where(token_mask[..., None].astype(bool), mask_token.astype(self.dtype), x)

    def position_table(self) -> jax.Array:
        """[1 + N, D] positions: the fixed sin-cos table, or the learned `pos_embed` param."""
        if self.positions == "sincos":
            return jnp.asarray(sincos_2d(self.width, self.grid_size))
        if self.positions == "learned":
            return self.param("pos_embed", partitioned(nn.initializers.normal(0.02), (None, "embed")),
                              (1 + self.grid_size ** 2, self.width), jnp.float32)
        raise ConfigError(f"positions={self.positions!r}: use 'sincos' or 'learned'")



def encoder_from_config(model_cfg, unroll: bool = False) -> Encoder:
    """Build the encoder of `model_cfg` (variant + overrides, image size, remat, dtype, attention, drop path).

    `unroll` unrolls the block scan completely (a loop-free program, for XLA's exact FLOP count); otherwise
    `model.scan_unroll` layers run per scan iteration.
    """
    dims = resolve_dims(model_cfg)
    attention = model_cfg.get("attention", "xla")  # run configs written before the field existed
    attention_implementation(attention)
    return Encoder(**dims, image_size=model_cfg.image_size, remat=model_cfg.remat,
                   dtype=jnp.dtype(model_cfg.dtype), attention=attention,
                   drop_path_rate=model_cfg.get("drop_path", 0.0),
                   scan_unroll=layers_per_scan(model_cfg, dims["depth"], unroll))


def layers_per_scan(model_cfg, depth: int, unroll: bool = False) -> int:
    """Layers per scan iteration of a `depth`-block stack: all with `unroll`, else model.scan_unroll clamped."""
    return depth if unroll else max(1, min(int(model_cfg.get("scan_unroll", 1)), depth))


def resolve_dims(model_cfg) -> dict:
    """Width/depth/heads/mlp_dim/patch_size from the size table, with non-zero config overrides applied."""
    size = dataclasses.asdict(lookup_size(model_cfg.variant))
    for field in size:
        override = model_cfg.get(field, 0)
        if override:
            size[field] = int(override)
    if size["width"] % size["heads"]:
        raise ConfigError(f"model.width={size['width']} is not divisible by model.heads={size['heads']}")
    return size


def count_params(tree) -> int:
    """Total number of elements in a pytree of arrays or ShapeDtypeStructs."""
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))
