"""The objectives by name: `config.objective` picks one; a new objective is its module plus one line here."""
from __future__ import annotations

import ml_collections

from mim_jax.config import validation
from mim_jax.errors import ConfigError
from mim_jax.objectives import mae, mae_teacher, simmim, wsp
from mim_jax.objectives.base import GENERIC_EVALUATORS, Objective, supports

OBJECTIVES: dict[str, Objective] = {
    "mae": mae.OBJECTIVE,
    "mae_teacher": mae_teacher.OBJECTIVE,
    "simmim": simmim.OBJECTIVE,
    "wsp": wsp.OBJECTIVE,
}


def get(name: str) -> Objective:
    """The objective registered as `name`, or a ConfigError listing the registered ones."""
    if name not in OBJECTIVES:
        raise ConfigError(f"objective={name!r} is not registered; use one of {sorted(OBJECTIVES)} "
                          f"(--config.objective=NAME)")
    return OBJECTIVES[name]


def objective_blocks() -> dict[str, ml_collections.ConfigDict]:
    """Default config block of every registered objective (config.mae, config.teacher, ...)."""
    blocks = {}
    for objective in OBJECTIVES.values():
        for name, factory in objective.config_blocks.items():
            blocks.setdefault(name, factory())
    return blocks


def check_foreign_blocks(config, objective: Objective) -> None:
    """A field set in another objective's block is a mistake: fail naming it and the objective that reads it."""
    for name, default in objective_blocks().items():
        if name in objective.config_blocks or name not in config:
            continue
        ours, theirs = _flat(config[name].to_dict()), _flat(default.to_dict())
        changed = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        if changed:
            readers = sorted(o.name for o in OBJECTIVES.values() if name in o.config_blocks)
            raise ConfigError(f"{name}.{changed[0]}={ours.get(changed[0])!r} is set, but objective="
                              f"{objective.name!r} does not read the {name!r} block (objective {', '.join(readers)} "
                              f"does); remove it or set --config.objective={readers[0]}")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def validate(config, check_data_path: bool = True) -> None:
    """Validate a pretraining config: the shared fields, then the objective's own; ConfigError names the field.

    `check_data_path=False` is for programs that only compile the step (the memory plan): no data or weights.
    """
    validation.check_renamed(config)
    objective = get(config.objective)
    validation.validate_common(config, check_data_path)
    check_foreign_blocks(config, objective)
    objective.validate(config, check_data_path)
    for name, e in config.evals.items():
        active = e.every_steps or e.at_end
        validation.require(not active or supports(objective, e.type), f"evals.{name}.type", e.type,
                           f"does not apply to objective={objective.name!r} (it supports "
                           f"{sorted(objective.evaluators | GENERIC_EVALUATORS)}); switch it off with --config.evals.{name}.every_steps=0 "
                           f"and at_end=false")
