"""Shared first stage (Xie et al. 2023): with the step schedule, cells that differ only in length share training.

A shorter cell's lr equals the longest cell's up to its own decay point d = round(7/8 x its length): both warm up
the same way and then hold the peak. So it starts from the longest cell's checkpoint at step d (kept there with
`ckpt.keep_steps`) through `ckpt.resume_from`, and trains only its decayed last eighth. Data order and masks depend
on (seed, step) alone, so the result equals training the cell from scratch bit for bit (tests/test_study.py).
A cell branches only when its config equals the longest cell's apart from the fields below and the two lr
schedules agree on every step before d (checked numerically); otherwise it trains from scratch.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mim_jax.study.grid import Cell
from mim_jax.train import optim

# Fields that may differ between a branch and its source: they change no number of the first d steps.
FREE_FIELDS = ("total_steps", "ckpt", "evals", "log")
LENGTH_AXIS = "length"


@dataclasses.dataclass(frozen=True)
class Branch:
    """`cell` leaves `source`'s run at `step` (its own decay point) instead of training those steps."""
    cell: str
    source: str
    step: int


def _comparable(config) -> dict:
    d = config.to_dict()
    return {k: v for k, v in d.items() if k not in FREE_FIELDS}


def lr_values(config, steps: int) -> np.ndarray:
    """The learning rate of `config` at steps 0 .. steps-1."""
    schedule = optim.learning_rate_schedule(config.optim, config.data.global_batch_size, config.total_steps)
    return np.asarray(schedule(np.arange(steps)))


def branch_step(long_config, short_config) -> int | None:
    """The step where the short run may leave the long one, or None when it must train from scratch."""
    if long_config.optim.schedule != "step" or short_config.optim.schedule != "step":
        return None
    if short_config.total_steps >= long_config.total_steps or _comparable(long_config) != _comparable(short_config):
        return None
    step = optim.step_decay_step(short_config.optim, short_config.total_steps)
    if step <= 0 or step >= short_config.total_steps:
        return None
    if not np.array_equal(lr_values(long_config, step), lr_values(short_config, step)):
        return None
    return step


def plan_branches(cells: list[Cell], configs: dict) -> dict[str, Branch]:
    """{short cell: Branch} for every group of cells equal but for the length axis; the longest is the source."""
    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        if LENGTH_AXIS in cell.values:
            key = tuple((a, v.label) for a, v in cell.values.items() if a != LENGTH_AXIS)
            groups.setdefault(key, []).append(cell)
    branches = {}
    for group in groups.values():
        source = max(group, key=lambda c: configs[c.name].total_steps)
        for cell in group:
            if cell is source:
                continue
            step = branch_step(configs[source.name], configs[cell.name])
            if step is not None:
                branches[cell.name] = Branch(cell.name, source.name, step)
    return branches


def keep_steps(source: str, branches: dict[str, Branch]) -> tuple[int, ...]:
    """The steps the source cell must keep for its branches."""
    return tuple(sorted({b.step for b in branches.values() if b.source == source}))
