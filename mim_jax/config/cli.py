"""Command-line parsing shared by the CLIs: a config-file flag whose bad overrides fail in one clear line."""
from __future__ import annotations

import difflib
import logging
import sys
from typing import Callable, Optional, Sequence

from absl import app, flags
from ml_collections import config_flags

from mim_jax.config.recipes import load_module
from mim_jax.config.run_config import RENAMED
from mim_jax.data.records import DatasetError
from mim_jax.errors import ConfigError


def load_config_file(spec: str):
    """Load `path.py[:arg]` the way --config does (for error messages; the flag does the real loading)."""
    path, _, arg = spec.partition(":")
    module = load_module(path)
    return module.get_config(arg) if arg else module.get_config()


def explain_unknown_override(argv: Sequence[str]) -> Optional[str]:
    """For the first --config.a.b=... naming a field the config lacks, say which and list the valid names."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return None
    try:
        config = load_config_file(spec)
    except Exception:  # the config flag itself reports problems with the file
        return None
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        name = arg[2:].split("=", 1)[0]
        for old, new in RENAMED.items():
            if name == f"config.{old}" or name.startswith(f"config.{old}."):
                return f"--{name}: the field moved; use --config.{new}{name[len('config.' + old):]}"
        node, parts = config, name.split(".")[1:]
        for i, part in enumerate(parts):
            keys = list(node.keys()) if hasattr(node, "keys") else []
            if part not in keys:
                prefix = ".".join(["config"] + parts[:i])
                close = difflib.get_close_matches(part, keys, n=1)
                hint = f" (did you mean --{prefix}.{close[0]}?)" if close else ""
                return (f"--{name}: {prefix} has no field {part!r}{hint}; "
                        f"valid fields there: {', '.join(sorted(keys))}")
            node = node[part]
    return None


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl flag parsing that turns ml_collections' raw errors for unknown override keys into one line."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as err:
        message = explain_unknown_override(argv) or f"bad --config override: {err}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def run_cli(action: Callable, example_config: str, workdir_help: Optional[str]) -> None:
    """Run `action(config, workdir)` (or `action(config)` when `workdir_help` is None) as an absl app.

    Flags are defined here, not at import, so the CLI modules can be imported side by side. User errors
    exit 2 in one line; an integer returned by `action` becomes the exit code.
    """
    config_flags.DEFINE_config_file("config", None, f"Config file, e.g. {example_config}", lock_config=True)
    if workdir_help is not None:
        flags.DEFINE_string("workdir", None, workdir_help)

    def main(argv) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        for name in ("absl", "jax"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if flags.FLAGS.config is None:
            sys.exit(f"error: --config is required, e.g. --config={example_config}")
        args = (flags.FLAGS.config,) if workdir_help is None else (flags.FLAGS.config, flags.FLAGS.workdir)
        try:
            result = action(*args)
        except (ConfigError, DatasetError) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        if isinstance(result, int) and not isinstance(result, bool):
            sys.exit(result)

    app.run(main, flags_parser=parse_flags)
