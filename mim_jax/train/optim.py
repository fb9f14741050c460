"""Optimizers: AdamW with MAE's weight-decay mask and a per-step warmup + cosine schedule; layer-wise lr decay."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mim_jax.train.nonfinite import wrap_optimizer

# Leaves never decayed: biases and LayerNorm scales (the 1-D params of a ViT; scanned layers add a
# leading 'layers' axis, so the rule goes by name, not by ndim).
NO_DECAY_NAMES = ("bias", "scale")


def peak_learning_rate(optim_cfg, global_batch_size: int) -> float:
    """lr = base_lr * global_batch / 256 (linear scaling rule of MAE)."""
    return optim_cfg.base_lr * global_batch_size / 256


SCHEDULES = ("cosine", "step", "linear")


def step_decay_step(optim_cfg, total_steps: int) -> int:
    """schedule=step: the first step at the decayed lr, round(step_decay_at * total_steps) (not before warmup ends)."""
    return max(round(optim_cfg.step_decay_at * total_steps), min(optim_cfg.warmup_steps, total_steps))


def learning_rate_schedule(optim_cfg, global_batch_size: int, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak over `optim.warmup_steps`, then by `optim.schedule`:

    cosine (MAE) decays to `optim.min_lr`; step (Xie et al.) holds the peak, then multiplies it by
    `optim.step_decay_factor` from step round(step_decay_at * total_steps) on; linear (MAWS's WSP) decays
    linearly to `optim.min_lr` at total_steps.
    """
    peak = peak_learning_rate(optim_cfg, global_batch_size)
    warmup = min(optim_cfg.warmup_steps, total_steps)
    if optim_cfg.get("schedule", "cosine") == "step":
        decay_step = step_decay_step(optim_cfg, total_steps)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup),
             optax.piecewise_constant_schedule(peak, {decay_step - warmup: optim_cfg.step_decay_factor})],
            [warmup])
    if optim_cfg.get("schedule", "cosine") == "linear":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, warmup),
             optax.linear_schedule(peak, optim_cfg.min_lr, max(total_steps - warmup, 1))], [warmup])
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=optim_cfg.min_lr)


def _leaf_name(path) -> str:
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return str(names[-1]) if names else ""


def weight_decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: everything but biases and norm scales."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path) not in NO_DECAY_NAMES, params)


def make_optimizer(optim_cfg, global_batch_size: int, total_steps: int) -> optax.GradientTransformation:
    """AdamW(b1, b2, wd with mask) on the warmup+cosine schedule, optional global-norm clipping first.

    With `optim.nonfinite='skip'` the whole chain skips updates whose gradients are not finite.
    """
    schedule = learning_rate_schedule(optim_cfg, global_batch_size, total_steps)
    adamw = optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay,
                        mask=weight_decay_mask)
    tx = optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip_norm), adamw) \
        if optim_cfg.grad_clip_norm > 0 else adamw
    return wrap_optimizer(tx, optim_cfg.get("nonfinite", "stop"))  # runs saved before the field existed: stop


# Layer-wise lr decay (BEiT / MAE fine-tuning): layer id 0 for the embeddings, i + 1 for block i, depth + 1 for the
# rest (final norms, head); a parameter's lr is scaled by decay ** (depth + 1 - id).
EMBEDDING_NAMES = ("patch_embed", "cls_token", "pos_embed")
STACKED_LAYERS_NAME = "layers"   # scanned blocks: leaves carry a leading [depth] axis, row i = block i
NO_DECAY_FINETUNE_NAMES = NO_DECAY_NAMES + ("cls_token", "pos_embed")


def _path_names(path) -> list[str]:
    return [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]


def layer_decay_scales(params: Any, depth: int, decay: float) -> Any:
    """Per-leaf lr multipliers: scalars, or [depth, 1, ...] rows for scanned block leaves."""
    def scale(path, leaf):
        names = _path_names(path)
        if STACKED_LAYERS_NAME in names:
            rows = decay ** (depth - np.arange(depth, dtype=np.float64))  # block i: id i + 1
            return jnp.asarray(rows.reshape((depth,) + (1,) * (len(leaf.shape) - 1)), jnp.float32)
        layer_id = 0 if any(n in EMBEDDING_NAMES for n in names) else depth + 1
        return jnp.asarray(decay ** (depth + 1 - layer_id), jnp.float32)
    return jax.tree_util.tree_map_with_path(scale, params)


def scales_from_layer_ids(ids: Any, top: int, decay: float) -> Any:
    """decay ** (top - id) per leaf of `ids` (ints, or arrays of ids for scanned rows), float32."""
    return jax.tree.map(lambda i: jnp.asarray(decay ** (top - np.asarray(i, np.float64)), jnp.float32), ids)


def encoder_layer_decay_scales(params: Any, encoder, decay: float) -> Any:
    """Layer-wise lr decay of a fine-tuning tree around `encoder`: its own `layer_ids` (SwinV2: SimMIM's mapping
    over stages) when it has them, else the ViT rule of `layer_decay_scales`."""
    if hasattr(encoder, "layer_ids"):
        return scales_from_layer_ids(*encoder.layer_ids(params), decay)
    return layer_decay_scales(params, encoder.depth, decay)


def scale_by_tree(scales: Any) -> optax.GradientTransformation:
    """Multiply each update leaf by the matching (broadcastable) leaf of `scales`; stateless."""
    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales), state
    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def finetune_decay_mask(params: Any) -> Any:
    """True for leaves with weight decay in MAE fine-tuning: not biases, norms, cls_token or pos_embed."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: not set(_path_names(path)[-1:]) & set(NO_DECAY_FINETUNE_NAMES), params)


def finetune_optimizer(schedule: optax.Schedule, scales: Any, b1: float, b2: float,
                       weight_decay: float) -> optax.GradientTransformation:
    """AdamW (MAE fine-tuning decay mask) whose whole step, weight decay included, is scaled per layer."""
    return optax.chain(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=finetune_decay_mask),
                       scale_by_tree(scales))
