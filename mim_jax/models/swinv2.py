"""SwinV2 encoder (Liu et al. 2022) as pretrained by SimMIM (Xie et al. 2022 / 2023): sizes S .. g of Xie et al.

Faithful to Microsoft's SwinV2: patch-4 embedding + LayerNorm (the SimMIM mask token replaces masked patch
embeddings after that norm), four stages of windowed blocks with res-post-norm, cosine attention with a per-head
learnable logit scale (init log 10, clamped at log 100), a log-spaced continuous position bias (Linear(2, 512) -
ReLU - Linear(512, heads, no bias), 16 x sigmoid) whose coordinates are normalized by the pretrained window
(so a window change at fine-tuning transfers), q and v biases only, shifted windows on odd blocks with the -100
mask, PatchMerging v2 (concatenate 2 x 2, reduce, then norm) and drop path. A stage whose grid is no larger than
the window uses the whole grid as its window, unshifted. Blocks of a stage are scanned (odd blocks select the
shifted path by a scanned flag), so parameters carry a leading 'layers' axis per stage.
"""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.errors import ConfigError
from mim_jax.models.vit import PatchEmbed, _remat_policy, drop_path, partitioned


@dataclasses.dataclass(frozen=True)
class SwinV2Size:
    """Embedding width of stage 1, blocks per stage, heads per stage, patch size, default window."""
    embed_dim: int
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    patch_size: int = 4
    window_size: int = 12


def _heads(width: int) -> tuple[int, ...]:
    """Heads {3, 6, 12, 24} x width / 96 (Xie et al. 2023, Table 1)."""
    return tuple(h * width // 96 for h in (3, 6, 12, 24))


# Xie et al. 2023 ("On Data Scaling in Masked Image Modeling") Table 1, plus a CPU size for tests and the demo.
SWINV2_SIZES: dict[str, SwinV2Size] = {
    "swinv2_cpu": SwinV2Size(32, (2, 2, 2, 2), (2, 4, 8, 16), window_size=4),
    "swinv2_s": SwinV2Size(96, (2, 2, 18, 2), _heads(96)),
    "swinv2_b": SwinV2Size(128, (2, 2, 18, 2), _heads(128)),
    "swinv2_l": SwinV2Size(192, (2, 2, 18, 2), _heads(192)),
    "swinv2_h": SwinV2Size(352, (2, 2, 18, 2), _heads(352)),
    "swinv2_g": SwinV2Size(448, (2, 2, 18, 2), _heads(448)),
}

LN_EPS = 1e-5          # torch nn.LayerNorm default (Microsoft and HF SwinV2)
MLP_RATIO = 4
CPB_HIDDEN = 512
LOGIT_SCALE_INIT = math.log(10.0)
LOGIT_SCALE_MAX = math.log(100.0)
SHIFT_MASK = -100.0
INIT_STD = 0.02        # Microsoft's _init_weights: trunc_normal(std=0.02) on every Linear, zero bias


def lookup_size(variant: str) -> SwinV2Size:
    """Size table entry for `variant`, with an error listing valid names."""
    if variant not in SWINV2_SIZES:
        raise ConfigError(f"model.variant={variant!r} is not a SwinV2 size; use one of {sorted(SWINV2_SIZES)}")
    return SWINV2_SIZES[variant]


def stage_geometry(image_size: int, patch_size: int, window_size: int, num_stages: int) -> list[tuple[int, int, int]]:
    """(grid, window, shift) per stage; a ConfigError naming model.image_size when patches or windows do not tile.

    A stage whose grid is no larger than the window uses the whole grid as its window, unshifted (Swin's rule).
    """
    if image_size <= 0 or image_size % patch_size:
        raise ConfigError(f"model.image_size={image_size}: must be a positive multiple of the patch size "
                          f"{patch_size}")
    grid, out = image_size // patch_size, []
    for i in range(num_stages):
        window = min(window_size, grid)
        if grid % window:
            raise ConfigError(f"model.image_size={image_size}: stage {i + 1}'s {grid}x{grid} grid is not divisible "
                              f"by model.window_size={window_size}; use an image size whose stage grids the window "
                              f"divides, e.g. 192 px with window 12 or 224 px with window 14")
        out.append((grid, window, 0 if grid <= window_size else window_size // 2))
        if i < num_stages - 1:
            if grid % 2:
                raise ConfigError(f"model.image_size={image_size}: stage {i + 1}'s {grid}x{grid} grid is odd, so "
                                  f"patch merging cannot halve it; use a multiple of {patch_size * 2 ** (num_stages - 1)}")
            grid //= 2
    return out


def check_heads(embed_dim: int, heads: tuple[int, ...]) -> None:
    """ConfigError naming model.heads when some stage's width is not divisible by its number of heads."""
    for i, h in enumerate(heads):
        width = embed_dim * 2 ** i
        if h <= 0 or width % h:
            raise ConfigError(f"model.heads: stage {i + 1} has width {width} (model.width={embed_dim} x {2 ** i}) "
                              f"and {h} heads, which do not divide it; choose model.width and model.heads so every "
                              f"stage's width is a multiple of its heads (heads double per stage)")


def relative_coords_table(window: int, pretrained_window: int) -> np.ndarray:
    """[(2w-1)^2, 2] log-spaced relative coordinates (SwinV2 CPB input), normalized by the pretrained window."""
    r = np.arange(-(window - 1), window, dtype=np.float64)
    table = np.stack(np.meshgrid(r, r, indexing="ij"), axis=-1)
    if pretrained_window > 1:  # a 1-token pretraining window has no offsets to scale by (HF divides by 0 there)
        table = table / (pretrained_window - 1)
    elif window > 1:
        table = table / (window - 1)
    table = table * 8.0
    table = np.sign(table) * np.log2(np.abs(table) + 1.0) / np.log2(8.0)
    return table.reshape(-1, 2).astype(np.float32)


def relative_position_index(window: int) -> np.ndarray:
    """[w*w, w*w] index into the (2w-1)^2 relative-offset table for each (query, key) pair of a window."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return (rel[..., 0] * (2 * window - 1) + rel[..., 1]).astype(np.int32)


def shift_mask(grid: int, window: int, shift: int) -> np.ndarray:
    """[windows, w*w, w*w] additive mask of the shifted windows: -100 between tokens of different regions."""
    idx = np.arange(grid)
    region = (idx >= grid - window).astype(np.int64) + (idx >= grid - shift)
    labels = region[:, None] * 3 + region[None, :]
    n = grid // window
    windows = labels.reshape(n, window, n, window).transpose(0, 2, 1, 3).reshape(n * n, window * window)
    return np.where(windows[:, None, :] != windows[:, :, None], SHIFT_MASK, 0.0).astype(np.float32)


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """[B, H, W, C] -> [B * windows, w*w, C] (windows in raster order)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
    """Inverse of window_partition: [B * windows, w*w, C] -> [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


def _dense(features: int, names: tuple, name: str, dtype, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                    kernel_init=partitioned(nn.initializers.truncated_normal(INIT_STD), names),
                    bias_init=partitioned(nn.initializers.zeros, names[-1:]))


def _norm(dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name=name,
                        scale_init=partitioned(nn.initializers.ones, ("embed",)),
                        bias_init=partitioned(nn.initializers.zeros, ("embed",)))


def _l2_normalize(x: jax.Array) -> jax.Array:
    """x / max(||x||, 1e-12) over the last axis (torch F.normalize), fp32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class WindowAttention(nn.Module):
    """SwinV2 window attention: cosine scores x clamped learned scale + 16 sigmoid(CPB) + mask; q/v biases."""
    width: int
    heads: int
    window: int
    pretrained_window: int = 0
    dtype: jnp.dtype = jnp.float32

    def position_bias(self) -> jax.Array:
        """[heads, w*w, w*w] continuous position bias 16 * sigmoid(MLP(log-spaced coords)), fp32."""
        coords = jnp.asarray(relative_coords_table(self.window, self.pretrained_window))
        hidden = nn.relu(nn.Dense(CPB_HIDDEN, name="cpb_fc1",
                                  kernel_init=partitioned(nn.initializers.truncated_normal(INIT_STD), (None, None)),
                                  bias_init=partitioned(nn.initializers.zeros, (None,)))(coords))
        table = nn.Dense(self.heads, use_bias=False, name="cpb_fc2",
                         kernel_init=partitioned(nn.initializers.truncated_normal(INIT_STD), (None, "heads")))(hidden)
        index = relative_position_index(self.window).reshape(-1)
        bias = table[index].reshape(self.window ** 2, self.window ** 2, self.heads).transpose(2, 0, 1)
        return 16.0 * jax.nn.sigmoid(bias)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x [B * windows, w*w, C], mask [windows, w*w, w*w] or None -> [B * windows, w*w, C]."""
        hd = self.width // self.heads
        init = partitioned(nn.initializers.truncated_normal(INIT_STD), ("embed", "heads", "head_dim"))
        zeros = partitioned(nn.initializers.zeros, ("heads", "head_dim"))
        xc = x.astype(self.dtype)

        def proj(name: str, bias: bool) -> jax.Array:
            kernel = self.param(f"{name}_kernel", init, (self.width, self.heads, hd), jnp.float32)
            out = jnp.einsum("btd,dhk->bthk", xc, kernel.astype(self.dtype))
            if bias:
                out = out + self.param(f"{name}_bias", zeros, (self.heads, hd), jnp.float32).astype(self.dtype)
            return out
        q, k, v = proj("query", True), proj("key", False), proj("value", True)
        scale = self.param("logit_scale", partitioned(nn.initializers.constant(LOGIT_SCALE_INIT), ("heads",)),
                           (self.heads,), jnp.float32)
        scores = jnp.einsum("bqhd,bkhd->bhqk", _l2_normalize(q), _l2_normalize(k))
        scores = scores * jnp.exp(jnp.minimum(scale, LOGIT_SCALE_MAX))[None, :, None, None]
        scores = scores + self.position_bias()[None]
        if mask is not None:
            n = mask.shape[0]
            scores = (scores.reshape(-1, n, *scores.shape[1:]) + mask[None, :, None]).reshape(scores.shape)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        kernel = self.param("out_kernel", partitioned(nn.initializers.truncated_normal(INIT_STD),
                                                      ("heads", "head_dim", "embed")),
                            (self.heads, hd, self.width), jnp.float32)
        bias = self.param("out_bias", partitioned(nn.initializers.zeros, ("embed",)), (self.width,), jnp.float32)
        return jnp.einsum("bthk,hkd->btd", out, kernel.astype(self.dtype)) + bias.astype(self.dtype)


class SwinBlock(nn.Module):
    """One res-post-norm SwinV2 block on [B, H, W, C]; a scanned flag picks the shifted windows (odd blocks)."""
    width: int
    heads: int
    grid: int
    window: int
    shift: int                   # the stage's shift (0: no block of the stage is shifted)
    pretrained_window: int = 0
    dtype: jnp.dtype = jnp.float32
    use_drop_path: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, xs: tuple):
        """xs = (shifted: bool, drop-path rate) of this block -> (x, None)."""
        shifted, rate = xs
        s = self.shift
        branch = lambda y: drop_path(y, rate, self.make_rng("dropout")) if self.use_drop_path else y
        h = jnp.where(shifted, jnp.roll(x, (-s, -s), axis=(1, 2)), x) if s else x
        mask = None
        if s:
            mask = jnp.where(shifted, jnp.asarray(shift_mask(self.grid, self.window, s)), 0.0)
        attn = WindowAttention(self.width, self.heads, self.window, self.pretrained_window, self.dtype,
                               name="attn")(window_partition(h, self.window), mask)
        h = window_reverse(attn, self.window, self.grid, self.grid)
        if s:
            h = jnp.where(shifted, jnp.roll(h, (s, s), axis=(1, 2)), h)
        x = x + branch(_norm(self.dtype, "norm1")(h))
        y = _dense(MLP_RATIO * self.width, ("embed", "mlp"), "fc1", self.dtype)(x)
        y = _dense(self.width, ("mlp", "embed"), "fc2", self.dtype)(nn.gelu(y, approximate=False))
        x = x + branch(_norm(self.dtype, "norm2")(y))
        return nn.with_logical_constraint(x, ("batch", None, None, "act_embed")), None


class PatchMerging(nn.Module):
    """PatchMerging v2: concatenate each 2 x 2 neighbourhood (x00, x10, x01, x11), Linear(4C, 2C), then LayerNorm."""
    width: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H/2, W/2, 2C]."""
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        x = _dense(2 * self.width, (None, "embed"), "reduction", self.dtype, use_bias=False)(x)
        return _norm(self.dtype, "norm")(x)


class SwinV2Encoder(nn.Module):
    """SwinV2: patch embed + norm, optional mask token (SimMIM), 4 stages, final norm -> [B, (S/32)^2, 8C]."""
    embed_dim: int
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    image_size: int
    patch_size: int = 4
    window_size: int = 12
    pretrained_window_sizes: tuple[int, ...] = ()   # per stage; () or 0 = the stage's own window (pretraining)
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    scan_unroll: int = 1
    drop_path_rate: float = 0.0
    final_norm: bool = True
    prefix_tokens: int = 0       # no CLS token: evaluators pool globally

    @property
    def grid_size(self) -> int:
        """Patches per side at the embedding (the mask grid)."""
        return self.image_size // self.patch_size

    @property
    def output_stride(self) -> int:
        """Pixels per output token side: patch x 2^(stages - 1) (32 for patch 4)."""
        return self.patch_size * 2 ** (len(self.depths) - 1)

    @property
    def num_features(self) -> int:
        """Width of the output tokens."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def depth(self) -> int:
        """Total number of blocks."""
        return sum(self.depths)

    def geometry(self) -> list[tuple[int, int, int]]:
        """(grid, window, shift) of each stage."""
        return stage_geometry(self.image_size, self.patch_size, self.window_size, len(self.depths))

    def pretrained_window(self, stage: int) -> int:
        """The window the stage was pretrained with (0 = its current window)."""
        sizes = tuple(self.pretrained_window_sizes)
        return sizes[stage] if sizes else 0

    @nn.compact
    def __call__(self, images: jax.Array, token_mask: jax.Array | None = None, train: bool = False) -> jax.Array:
        """[B, S, S, 3] -> [B, (S/32)^2, 8C]; token_mask [B, (S/4)^2] (1 = masked) swaps in the `mask_token`."""
        check_heads(self.embed_dim, self.heads)
        geometry = self.geometry()
        x = PatchEmbed(self.embed_dim, self.patch_size, self.dtype, name="patch_embed")(images)
        x = _norm(self.dtype, "patch_norm")(x)
        if token_mask is not None:
            if token_mask.shape != x.shape[:2]:
                raise ValueError(f"token_mask has shape {token_mask.shape}; expected (batch, patches) = {x.shape[:2]}")
            mask_token = self.param("mask_token", partitioned(nn.initializers.truncated_normal(INIT_STD),
                                                              (None, None, "embed")), (1, 1, self.embed_dim), jnp.float32)
            x = jnp.where(token_mask[..., None].astype(bool), mask_token.astype(self.dtype), x)
        g = self.grid_size
        x = x.reshape(x.shape[0], g, g, self.embed_dim)
        rates = np.linspace(0.0, self.drop_path_rate, self.depth)
        use_drop_path = train and self.drop_path_rate > 0
        start = 0
        for i, (depth, heads, (grid, window, shift)) in enumerate(zip(self.depths, self.heads, geometry)):
            width = self.embed_dim * 2 ** i
            xs = (jnp.asarray(np.arange(depth) % 2 == 1), jnp.asarray(rates[start:start + depth], jnp.float32))
            x = self.stage(i, x, xs, width, heads, grid, window, shift, use_drop_path)
            start += depth
            if i < len(self.depths) - 1:
                x = PatchMerging(width, self.dtype, name=f"stage{i}_merge")(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        return _norm(self.dtype, "norm")(x) if self.final_norm else x

    def stage(self, i: int, x: jax.Array, xs: tuple, width: int, heads: int, grid: int, window: int, shift: int,
              use_drop_path: bool) -> jax.Array:
        """The scanned blocks of stage i (parameters stacked on a leading 'layers' axis)."""
        block = SwinBlock
        if self.remat != "none":
            block = nn.remat(SwinBlock, policy=_remat_policy(self.remat), prevent_cse=False)
        depth = len(xs[1])
        stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                        in_axes=0, length=depth, unroll=max(1, min(self.scan_unroll, depth)),
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = stack(width, heads, grid, window, shift, self.pretrained_window(i), self.dtype, use_drop_path,
                     name=f"stage{i}_blocks")(x, xs)
        return x

    def at_resolution(self, image_size: int, window_size: int) -> SwinV2Encoder:
        """This encoder at a new image / window size, its CPB coordinates normalized by the pretraining windows."""
        pretrained = tuple(self.pretrained_window(i) or w for i, (_, w, _) in enumerate(self.geometry()))
        return self.clone(image_size=image_size, window_size=window_size, pretrained_window_sizes=pretrained,
                          parent=None)

    def layer_ids(self, params) -> tuple:
        """(ids, top): SimMIM's Swin layer ids for layer-wise lr decay; scale = decay ** (top - id).

        patch embedding, its norm and the mask token 0; block j of stage i: sum(depths[:i]) + j + 1 (a [depth]
        row per scanned leaf); stage i's merging sum(depths[:i + 1]); the rest (final norm, heads) sum(depths) + 1.
        """
        offsets = np.concatenate([[0], np.cumsum(self.depths)])

        def layer_id(path, leaf):
            names = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
            for n in names:
                if n in ("patch_embed", "patch_norm", "mask_token"):
                    return 0
                if n.startswith("stage") and n.endswith("_blocks"):
                    i = int(n[len("stage"):-len("_blocks")])
                    rows = offsets[i] + np.arange(self.depths[i]) + 1
                    return rows.reshape((-1,) + (1,) * (len(leaf.shape) - 1))
                if n.startswith("stage") and n.endswith("_merge"):
                    return int(offsets[int(n[len("stage"):-len("_merge")]) + 1])
            return int(offsets[-1]) + 1
        return jax.tree_util.tree_map_with_path(layer_id, params), int(offsets[-1]) + 1


def resolve_size(model_cfg) -> SwinV2Size:
    """The size of model.variant with non-zero overrides: model.width (stage-1 width), model.heads (stage-1 heads,
    doubling per stage), model.patch_size, model.window_size."""
    size = lookup_size(model_cfg.variant)
    width = int(model_cfg.get("width", 0) or size.embed_dim)
    heads = size.heads
    if model_cfg.get("heads", 0):
        heads = tuple(int(model_cfg.heads) * 2 ** i for i in range(len(size.depths)))
    elif width != size.embed_dim:
        heads = tuple(h * width // size.embed_dim for h in size.heads)
    return dataclasses.replace(size, embed_dim=width, heads=heads,
                               patch_size=int(model_cfg.get("patch_size", 0) or size.patch_size),
                               window_size=int(model_cfg.get("window_size", 0) or size.window_size))


def validate(model_cfg) -> None:
    """ConfigErrors naming model.variant / model.heads / model.image_size / model.window_size."""
    size = resolve_size(model_cfg)
    check_heads(size.embed_dim, size.heads)
    if size.window_size < 1:
        raise ConfigError(f"model.window_size={size.window_size}: must be a positive integer, e.g. 12")
    stage_geometry(model_cfg.image_size, size.patch_size, size.window_size, len(size.depths))
    pretrained = tuple(model_cfg.get("pretrained_window_sizes", ()) or ())
    if pretrained and len(pretrained) != len(size.depths):
        raise ConfigError(f"model.pretrained_window_sizes={pretrained}: give one window per stage "
                          f"({len(size.depths)}), e.g. (12, 12, 12, 6), or () when pretraining")


def encoder_from_config(model_cfg, unroll: bool = False) -> SwinV2Encoder:
    """The SwinV2 encoder of `model_cfg` (variant + overrides, image / window size, remat, dtype, drop path)."""
    validate(model_cfg)
    size = resolve_size(model_cfg)
    depth = max(size.depths)
    return SwinV2Encoder(size.embed_dim, size.depths, size.heads, model_cfg.image_size, size.patch_size,
                         size.window_size, tuple(model_cfg.get("pretrained_window_sizes", ()) or ()),
                         remat=model_cfg.remat, dtype=jnp.dtype(model_cfg.dtype),
                         scan_unroll=depth if unroll else int(model_cfg.get("scan_unroll", 1)),
                         drop_path_rate=model_cfg.get("drop_path", 0.0))


def forward_flops_per_example(model_cfg) -> float:
    """Encoder forward FLOPs per example (MaxText convention): patch embed, q/k/v/out, MLP, windowed attention
    4 T w^2 C per block, patch merging. The CPB MLP runs once per window shape, not per example: not counted."""
    size = resolve_size(model_cfg)
    geometry = stage_geometry(model_cfg.image_size, size.patch_size, size.window_size, len(size.depths))
    tokens0 = geometry[0][0] ** 2
    total = 2.0 * tokens0 * size.embed_dim * size.patch_size ** 2 * 3
    for i, (depth, (grid, window, _)) in enumerate(zip(size.depths, geometry)):
        c, t = size.embed_dim * 2 ** i, grid * grid
        block = 2.0 * t * c * c * 4 + 2.0 * t * c * MLP_RATIO * c * 2 + 4.0 * t * window * window * c
        total += depth * block
        if i < len(size.depths) - 1:
            total += 2.0 * (t // 4) * (4 * c) * (2 * c)
    return total
