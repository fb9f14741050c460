"""Helpers for config files: 'key=value,...' arguments (the `:arg` of --config) and loading a sibling config file."""
from __future__ import annotations

import importlib.util
import os
from types import ModuleType


def parse_arg(arg: str, keys: tuple[str, ...], choices: dict[str, tuple] | None = None) -> dict[str, str]:
    """'model=L/16,batch=4096' -> {'model': 'L/16', 'batch': '4096'}; unknown keys or choices fail in one line."""
    out = {}
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            raise ValueError(f"config argument {item!r} must look like key=value (keys: {', '.join(keys)})")
        key, value = item.split("=", 1)
        if key not in keys:
            raise ValueError(f"unknown config argument {key!r}; use {', '.join(f'{k}=...' for k in keys)}")
        out[key] = value
    for key, allowed in (choices or {}).items():
        if key in out and out[key] not in allowed:
            raise ValueError(f"config argument {key}={out[key]!r}; use one of {allowed}")
    return out


def load_module(path: str) -> ModuleType:
    """The Python config file at `path` as a module (a config file may build on another one)."""
    spec = importlib.util.spec_from_file_location(f"_mim_jax_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sibling(config_file: str, name: str) -> ModuleType:
    """The config file `name` next to `config_file` (pass __file__), as a module."""
    return load_module(os.path.join(os.path.dirname(os.path.abspath(config_file)), name))
