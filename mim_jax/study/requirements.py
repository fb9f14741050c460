"""What a study cell needs beyond its config: registered objectives, model sizes in a size table, config files.

Looked up by name in the live registries (the objective registry, every `*_SIZES` table of `mim_jax.models`), so a
grid that needs an objective or backbone that has not landed yet refuses cleanly today and runs once it lands.
"""
from __future__ import annotations

import importlib
import os
import pkgutil

import mim_jax.models
from mim_jax.objectives import registry


def model_size_tables() -> dict[str, dict]:
    """{'mim_jax.models.vit.VIT_SIZES': {...}, ...}: every size table of the model modules."""
    tables = {}
    for info in pkgutil.iter_modules(mim_jax.models.__path__):
        module = importlib.import_module(f"mim_jax.models.{info.name}")
        for attr, value in vars(module).items():
            if attr.endswith("_SIZES") and isinstance(value, dict):
                tables[f"{module.__name__}.{attr}"] = value
    return tables


def missing_objective(name: str) -> str | None:
    """Why objective `name` is not there (None when it is registered)."""
    if name in registry.OBJECTIVES:
        return None
    return f"needs objective {name!r}, which is not registered (registered: {', '.join(sorted(registry.OBJECTIVES))})"


def missing_model(variant: str) -> str | None:
    """Why model size `variant` is not there (None when a size table of mim_jax.models has it)."""
    tables = model_size_tables()
    if any(variant in table for table in tables.values()):
        return None
    names = ", ".join(t.rsplit(".", 1)[1] for t in sorted(tables))
    return f"needs model {variant!r}, which is in no size table of mim_jax.models ({names})"


def missing_config(path: str) -> str | None:
    """Why config file `path` is not there (None when it exists)."""
    return None if os.path.exists(path) else f"needs config file {path}, which is not there"


CHECKS = {"objective": missing_objective, "model": missing_model, "config": missing_config}


def first_missing(needs: dict) -> str | None:
    """The first unmet need of {'objective': [...], 'model': [...], 'config': [...]} as a phrase, else None."""
    for kind in ("objective", "model", "config"):
        for name in needs.get(kind, []):
            reason = CHECKS[kind](name)
            if reason:
                return reason
    return None
