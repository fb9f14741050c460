"""Load a pretraining run's model and weights (latest or a given step) for evaluation and inspection."""
from __future__ import annotations

from typing import Any

import orbax.checkpoint as ocp

from mim_jax import checkpoints, optim
from mim_jax.configuration import ConfigError
from mim_jax.models.mae import MAE, mae_from_config
from mim_jax.train_step import abstract_train_state, create_train_state


def run_model(run_cfg) -> MAE:
    """The MAE a run trained: its decoder predicts pixels, or the teacher's features (objective mae_teacher)."""
    if run_cfg.get("objective", "mae") != "mae_teacher":
        return mae_from_config(run_cfg.model)
    from mim_jax.convert.teacher_weights import teacher_arch
    return mae_from_config(run_cfg.model, teacher_arch(run_cfg.teacher).feature_dim(run_cfg.teacher.feature))


def load_run(init_from: str, mesh, rules, random_init: bool = False) -> tuple[Any, MAE, Any, int]:
    """(run config, MAE model, all params, step) from RUN_DIR or RUN_DIR/checkpoints/<step>.

    With `random_init`, the params are the run's initialization (same seed), at step 0.
    """
    run_dir, step = checkpoints.locate_checkpoint(init_from)
    run_cfg = checkpoints.load_run_config(run_dir)
    model = run_model(run_cfg)
    tx = optim.make_optimizer(run_cfg.optim, run_cfg.data.global_batch_size, run_cfg.total_steps)
    if random_init:
        state, _ = create_train_state(model, tx, mesh, rules, run_cfg.seed)
        return run_cfg, model, state.params, 0
    manager = checkpoints.checkpoint_manager(run_dir, max_to_keep=1, async_save=False)
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise ConfigError(f"init_from={init_from!r}: no complete checkpoint found "
                          f"(available steps: {list(manager.all_steps())})")
    abstract, _ = abstract_train_state(model, tx, mesh, rules)
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    return run_cfg, model, state.params, step
