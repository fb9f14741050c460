"""Classification heads on a ViT's CLS token: the WSP head of MAWS / SWAG, Linear(D, D) - Tanh - Linear(D, C).

The class dimension carries the logical axis 'classes' (sharded over the mesh by `mesh.rules`), so a 28K-class
head of a 6.5B model is split across chips; it is padded to a multiple of `CLASS_MULTIPLE` so that it divides
any mesh axis size up to that (the padded logits are masked out by the loss, never exported).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mim_jax.models.vit import Encoder, partitioned, xavier_uniform

CLASS_MULTIPLE = 128  # classes are padded to a multiple of this (shards evenly over 1, 2, 4, ..., 128 devices)


def padded_classes(num_classes: int) -> int:
    """The head's stored class dimension: num_classes rounded up to a multiple of CLASS_MULTIPLE."""
    return -(-num_classes // CLASS_MULTIPLE) * CLASS_MULTIPLE


class WSPHead(nn.Module):
    """[B, D] features -> [B, padded_classes] fp32 logits through Linear(D, D), Tanh, Linear(D, C)."""
    num_classes: int  # the real classes; the kernel is padded to padded_classes(num_classes)
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """CLS features [B, D] -> logits [B, C_padded] (fp32)."""
        width = x.shape[-1]
        hidden = nn.Dense(width, dtype=self.dtype, name="pre_logits",
                          kernel_init=partitioned(xavier_uniform(), ("head_in", "embed")),
                          bias_init=partitioned(nn.initializers.zeros, ("embed",)))(x)
        hidden = jnp.tanh(hidden)
        logits = nn.Dense(padded_classes(self.num_classes), dtype=self.dtype, name="out",
                          kernel_init=partitioned(xavier_uniform(), ("embed", "classes")),
                          bias_init=partitioned(nn.initializers.zeros, ("classes",)))(hidden)
        return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "act_classes"))


class WSPClassifier(nn.Module):
    """Encoder -> CLS token -> WSPHead. `__call__(images)` -> logits [B, C_padded]; params {'encoder', 'head'}."""
    encoder: Encoder
    num_classes: int

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """images [B, S, S, 3] (normalized) -> fp32 logits [B, C_padded]."""
        cls = self.encoder(images, train=train)[:, 0]
        return WSPHead(self.num_classes, self.encoder.dtype, name="head")(cls)
