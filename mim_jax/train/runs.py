"""Load a pretraining run's model and weights (latest or a given step) for evaluation, teachers and init_from."""
from __future__ import annotations

import logging
import os
from typing import Any

import flax.linen as nn
import orbax.checkpoint as ocp

from mim_jax import workdir as run_dirs
from mim_jax.config.run_config import read_run_config
from mim_jax.errors import ConfigError
from mim_jax.objectives import registry
from mim_jax.train import checkpoints, optim
from mim_jax.train.state import abstract_train_state, create_train_state


def load_run(init_from: str, mesh, rules, random_init: bool = False) -> tuple[Any, nn.Module, Any, int]:
    """(run config, model, all params, step) from RUN_DIR or RUN_DIR/checkpoints/<step>.

    The model is the one the run's objective trains. With `random_init`, the params are the run's
    initialization (same seed), at step 0.
    """
    run_dir, step = run_dirs.locate_checkpoint(init_from)
    run_cfg = read_run_config(run_dir)
    objective = registry.get(run_cfg.get("objective", "mae"))
    model = objective.build_model(run_cfg)
    inputs = objective.init_inputs(model, run_cfg)
    tx = optim.make_optimizer(run_cfg.optim, run_cfg.data.global_batch_size, run_cfg.total_steps)
    if random_init:
        state, _ = create_train_state(model, inputs, tx, mesh, rules, run_cfg.seed)
        return run_cfg, model, state.params, 0
    with checkpoints.checkpoint_reader(run_dir) as manager:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise ConfigError(f"init_from={init_from!r}: no complete checkpoint found "
                              f"(available steps: {list(manager.all_steps())})")
        check_has_encoder(run_dir, step, init_from)
        abstract, _ = abstract_train_state(model, inputs, tx, mesh, rules)
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    return run_cfg, model, state.params, step


def read_run_params(path: str, mesh, rules) -> Any:
    """All params of the run at `path` (latest or given step) on `mesh`: what a frozen run-teacher loads."""
    return load_run(path, mesh, rules)[2]


def saved_param_groups(run_dir: str, step: int) -> list[str]:
    """Top-level names under `params` in the saved train state of RUN_DIR/checkpoints/<step> (read from metadata)."""
    path = os.path.join(run_dir, checkpoints.CHECKPOINT_DIR, str(step), "state")
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # orbax warns that this item has no step-level metadata file
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.metadata(path).item_metadata.tree
    finally:
        absl_logger.setLevel(level)
    params = tree.get("params") if isinstance(tree, dict) else None
    return sorted(params) if isinstance(params, dict) else []


def check_has_encoder(run_dir: str, step: int, init_from: str) -> None:
    """A clear error when the checkpoint holds no encoder parameters (e.g. a decoder- or head-only save)."""
    groups = saved_param_groups(run_dir, step)
    if "encoder" not in groups:
        raise ConfigError(f"init_from={init_from!r}: checkpoint step {step} has no encoder parameters "
                          f"(params holds {groups or 'nothing'}); point init_from at a pretraining run whose "
                          f"checkpoints contain params/encoder")
