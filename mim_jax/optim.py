"""Optimizers: AdamW with MAE's weight-decay mask and a per-step warmup + cosine schedule."""
from __future__ import annotations

from typing import Any

import jax
import optax

from mim_jax.nonfinite import wrap_optimizer

# Leaves never decayed: biases and LayerNorm scales (the 1-D params of a ViT; scanned layers add a
# leading 'layers' axis, so the rule goes by name, not by ndim).
NO_DECAY_NAMES = ("bias", "scale")


def peak_learning_rate(optim_cfg, global_batch_size: int) -> float:
    """lr = base_lr * global_batch / 256 (linear scaling rule of MAE)."""
    return optim_cfg.base_lr * global_batch_size / 256


def learning_rate_schedule(optim_cfg, global_batch_size: int, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to the peak over `optim.warmup_steps`, then cosine to `optim.min_lr`."""
    peak = peak_learning_rate(optim_cfg, global_batch_size)
    warmup = min(optim_cfg.warmup_steps, total_steps)
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
