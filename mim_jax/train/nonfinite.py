"""Non-finite loss policy (`optim.nonfinite`): `stop` the run naming the step, or `skip` the update and count it.

`skip` wraps the optimizer in `optax.apply_if_finite`: inside the jitted step a non-finite gradient leaves
params and optimizer moments unchanged and increments its counters, which the step reports as the metrics
`skipped_steps` (total) and `consecutive_skips`. The host looks at every step's metrics without syncing
every step: `NonFiniteWatch` keeps the (tiny) metric arrays of the steps since the last sync point and
checks them all at the next one (log steps, CPU syncs, before every checkpoint save).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

NONFINITE_POLICIES = ("stop", "skip")
# apply_if_finite applies a non-finite update after this many in a row; the host stops long before.
_NEVER_APPLY = 2 ** 31 - 1


class NonFiniteError(FloatingPointError):
    """A non-finite loss (stop) or too many skipped updates in a row (skip); no checkpoint holds it."""


def wrap_optimizer(tx: optax.GradientTransformation, policy: str) -> optax.GradientTransformation:
    """`tx` itself for `stop`; for `skip`, `tx` that ignores updates with non-finite gradients."""
    if policy == "skip":
        return optax.apply_if_finite(tx, max_consecutive_errors=_NEVER_APPLY)
    return tx


def skip_metrics(opt_state: Any) -> dict:
    """{'skipped_steps', 'consecutive_skips'} from an apply_if_finite state; {} for any other optimizer."""
    if not isinstance(opt_state, optax.ApplyIfFiniteState):
        return {}
    return {"skipped_steps": opt_state.total_notfinite, "consecutive_skips": opt_state.notfinite_count}


class NonFiniteWatch:
    """Collects each step's metrics (device arrays) and enforces the policy when `check()` syncs them."""

    def __init__(self, policy: str, max_consecutive_skips: int):
        self.policy, self.max_consecutive_skips = policy, max_consecutive_skips
        self._pending: list[tuple[int, dict]] = []

    def add(self, step: int, metrics: dict) -> None:
        """Remember `step`'s metrics until the next check (no host sync)."""
        self._pending.append((step, {k: metrics[k] for k in ("loss", "consecutive_skips") if k in metrics}))

    def check(self) -> None:
        """Fetch the pending metrics in one transfer; raise NonFiniteError naming the step that breaks the policy."""
        pending, self._pending = jax.device_get(self._pending), []
        for step, values in pending:
            if self.policy == "stop" and not np.isfinite(values["loss"]):
                raise NonFiniteError(
                    f"non-finite loss {float(values['loss'])} at step {step} (optim.nonfinite='stop'); no checkpoint "
                    f"was written from it. Lower optim.base_lr, set optim.grad_clip_norm, or use "
                    f"optim.nonfinite='skip', then re-run to resume from the last checkpoint")
            if self.policy == "skip" and int(values["consecutive_skips"]) >= self.max_consecutive_skips:
                raise NonFiniteError(
                    f"{int(values['consecutive_skips'])} non-finite updates in a row skipped up to step {step} "
                    f"(optim.max_consecutive_skips={self.max_consecutive_skips}); the run stops, its checkpoints "
                    f"hold only finite updates. Lower optim.base_lr or set optim.grad_clip_norm and re-run")
