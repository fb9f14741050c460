"""Masked autoencoder: per-sample random masking, encoder on visible tokens, light decoder over all tokens."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.vit import (
    BlockStack,
    Encoder,
    layer_norm,
    partitioned,
    sincos_2d,
    xavier_uniform,
)


def num_visible(length: int, mask_ratio: float) -> int:
    """Tokens kept (seen by the encoder) out of `length` patches: int(L * (1 - r)), rounded down as in MAE."""
    return int(length * (1 - mask_ratio))


def random_masking(noise: jax.Array, mask_ratio: float) -> dict:
    """Per-sample masking from uniform noise [B, L] with static shapes (argsort, MAE).

    Returns keep_ids [B, K] (K = int(L * (1 - r))), restore_ids [B, L] (inverse of the shuffle)
    and mask [B, L] with 1 = removed (masked), 0 = kept, in the original token order.
    """
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"model.mask_ratio={mask_ratio} must lie in (0, 1), e.g. 0.75")
    length = noise.shape[1]
    num_keep = num_visible(length, mask_ratio)
    shuffle_ids = jnp.argsort(noise, axis=1)
    restore_ids = jnp.argsort(shuffle_ids, axis=1)
    shuffled_mask = (jnp.arange(length) >= num_keep).astype(jnp.float32)
    mask = jnp.take_along_axis(jnp.broadcast_to(shuffled_mask, noise.shape), restore_ids, axis=1)
    return {"keep_ids": shuffle_ids[:, :num_keep], "restore_ids": restore_ids, "mask": mask}


class Decoder(nn.Module):
    """MAE decoder: embed to decoder width, insert mask tokens, unshuffle, sin-cos positions, blocks, predict."""
    width: int
    depth: int
    heads: int
    mlp_dim: int
    grid_size: int
    out_dim: int
    remat: str = "none"
    dtype: jnp.dtype = jnp.float32
    scan_unroll: int = 1  # passed to BlockStack
    attention: str = "xla"  # passed to BlockStack (model.attention)

    @nn.compact
    def __call__(self, latent: jax.Array, restore_ids: jax.Array) -> jax.Array:
        """latent [B, 1+K, D_enc] -> predictions [B, 1+L, out_dim] (CLS row first)."""
        x = nn.Dense(self.width, dtype=self.dtype, name="embed",
                     kernel_init=partitioned(xavier_uniform(), ("embed", "decoder_embed")),
                     bias_init=partitioned(nn.initializers.zeros, ("decoder_embed",)))(latent)
        mask_token = self.param("mask_token", partitioned(nn.initializers.normal(0.02), (None, None, "decoder_embed")),
                                (1, 1, self.width), jnp.float32)
        batch, length = restore_ids.shape
        num_masked = length + 1 - x.shape[1]
        fill = jnp.broadcast_to(mask_token.astype(x.dtype), (batch, num_masked, self.width))
        tokens = jnp.concatenate([x[:, 1:], fill], axis=1)
        tokens = jnp.take_along_axis(tokens, restore_ids[..., None], axis=1)
        x = jnp.concatenate([x[:, :1], tokens], axis=1)
        x = x + jnp.asarray(sincos_2d(self.width, self.grid_size), self.dtype)[None]
        x = nn.with_logical_constraint(x, ("batch", "seq", "act_embed"))
        x = BlockStack(self.width, self.depth, self.heads, self.mlp_dim, self.remat, self.dtype,
                       scan_unroll=self.scan_unroll, attention=self.attention, name="blocks")(x)
        x = layer_norm(self.dtype, "norm")(x)
        return nn.Dense(self.out_dim, dtype=self.dtype, name="pred",
                        kernel_init=partitioned(xavier_uniform(), ("embed", "patch")),
                        bias_init=partitioned(nn.initializers.zeros, ("patch",)))(x)


class MAE(nn.Module):
    """Encoder + decoder. `__call__(images, noise)` -> dict(pred [B, L, out], pred_with_cls [B, 1+L, out], mask)."""
    encoder: Encoder
    decoder: Decoder
    mask_ratio: float = 0.75

    def __call__(self, images: jax.Array, noise: jax.Array, train: bool = False) -> dict:
        """Mask by `noise` [B, L], encode the visible tokens, decode all L patch predictions."""
        masking = random_masking(noise, self.mask_ratio)
        latent = self.encoder(images, keep_ids=masking["keep_ids"], train=train)
        pred = self.decoder(latent, masking["restore_ids"])
        return {"pred": pred[:, 1:], "pred_with_cls": pred, "mask": masking["mask"]}
