"""What the cluster launchers check before they submit anything: the job's pretrain config against its shape.

A launcher takes its own options, then `--`, then the pretraining arguments every worker runs
(`--config=... --workdir=... --config.field=value ...`). The config is loaded with those overrides by
the same ml_collections flag parser the workers use, validated, and its mesh and global batch are
checked against the job's device and process counts, so that a job that would fail at start-up fails
here, before a slice is rented or a job queued.
"""
from __future__ import annotations

import math
import sys
from typing import Callable, Optional, Sequence

from absl import flags
from ml_collections import config_flags

from mim_jax.errors import ConfigError
from mim_jax.objectives import registry
from mim_jax.parallel.sharding import (
    MESH_AXES,
    check_batch_split,
    logical_rules,
    resolve_mesh_shape,
)


def split_at_dashes(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(launcher arguments, pretraining arguments) split at the first `--`."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    split = argv.index("--")
    return argv[:split], argv[split + 1:]


def pretrain_flag(args: Sequence[str], name: str) -> str | None:
    """The value of `--name=value` among the pretraining arguments (None when absent)."""
    prefix = f"--{name}="
    values = [a[len(prefix):] for a in args if a.startswith(prefix)]
    return values[-1] if values else None


def load_pretrain_config(args: Sequence[str]):
    """The config `python -m mim_jax.pretrain ARGS` would run, overrides applied (ConfigError when bad)."""
    if pretrain_flag(args, "config") is None:
        raise ConfigError("no --config among the pretraining arguments after `--`; e.g. -- "
                          "--config=configs/pretrain.py:model=L/16 --workdir=DIR")
    config_args = [a for a in args if a.startswith("--config")]
    argv = ["mim_jax.pretrain", *config_args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "pretrain config", flag_values=values, lock_config=True,
                                    sys_argv=argv)
    try:
        values(argv)
        config = values.config
        config.keys()  # a file that failed to load is an object that raises its error on first use
        return config
    except (flags.Error, AttributeError, KeyError, ValueError, OSError) as err:
        raise ConfigError(f"the pretraining arguments {' '.join(config_args)!r} do not load: "
                          f"{str(err).splitlines()[0]}") from None


def check_job(config, num_devices: int, num_processes: int, job: str) -> tuple[int, ...]:
    """Validate `config` and check its mesh and batch on a job of `num_devices` in `num_processes`.

    Returns the resolved (data, fsdp, tensor) mesh shape; raises ConfigError naming the config field, the
    job shape (`job`, e.g. '2 nodes x 8 GPUs') and the fix.
    """
    registry.validate(config, check_data_path=False)
    try:
        shape = resolve_mesh_shape(config.mesh.shape, num_devices)
    except ConfigError as err:
        raise ConfigError(f"{job} gives {num_devices} devices, but {err}") from None
    if num_devices % num_processes:
        raise ConfigError(f"{job}: {num_devices} devices do not split evenly over {num_processes} processes")
    try:
        check_batch_split(config.data.global_batch_size, config.optim.grad_accum_steps,
                          dict(zip(MESH_AXES, shape)), logical_rules(config.mesh), num_processes)
    except ConfigError as err:
        raise ConfigError(f"{job}: {err}") from None
    return shape


def describe_mesh(shape: Sequence[int]) -> str:
    """'data=2 x fsdp=8 x tensor=1 (16 devices)'."""
    return " x ".join(f"{a}={s}" for a, s in zip(MESH_AXES, shape)) + f" ({math.prod(shape)} devices)"


def run_launcher(parse_args: Callable, action: Callable, argv: Optional[Sequence[str]]) -> int:
    """A launcher's main: parse `argv` (default sys.argv), run `action(args)`; a ConfigError is one line, exit 2."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return action(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
