"""Evaluate a pretrained model: python -m mim_jax.evaluate --config=configs/{linear_probe,knn,fewshot,recon_loss,
finetune}.py --config.init_from=PRETRAIN_WORKDIR[/checkpoints/STEP] --workdir=DIR  ->  DIR/evals/<name>.json

init_from may also be a weights file (official MAE / MAWS / DINO checkpoint, timm export, mim_jax format); the
data must then be named (--config.data.source=arrayrecord --config.data.path=DIR).
"""
from __future__ import annotations

import jax

from mim_jax import console  # noqa: F401  (first: quiet library start-up, before TensorFlow loads)
from mim_jax import workdir as run_dirs
from mim_jax.config import validation
from mim_jax.config.cli import run_cli
from mim_jax.data.sources import resolve_dataset_dir
from mim_jax.errors import ConfigError
from mim_jax.evaluate.evaluators import EvalContext, describe, run_evaluator
from mim_jax.evaluate.results import write_eval
from mim_jax.evaluate.weights_file import load_weights_file
from mim_jax.objectives import registry
from mim_jax.objectives.base import supports
from mim_jax.parallel import distributed
from mim_jax.parallel.sharding import logical_rules, make_mesh
from mim_jax.train.runs import load_run, read_run_params


def evaluate(config, workdir: str) -> dict:
    """Run the configured evaluator (config.eval) and write WORKDIR/evals/<config.name>.json."""
    distributed.initialize()
    validation.validate_eval(config.eval, "eval")
    workdir = validation.check_workdir(workdir)
    if not config.init_from:
        raise ConfigError("init_from is empty; pass --config.init_from=PRETRAIN_WORKDIR")
    mesh = make_mesh(config.mesh)
    rules = logical_rules(config.mesh)
    norm_pix_loss = True  # only recon_loss reads it, and it refuses weights files
    run_cfg, frozen, frozen_params = None, None, ()
    if run_dirs.is_local_file(config.init_from):
        model, params, step = load_file(config, mesh, rules)
        data_cfg = config.data
    else:
        run_cfg, model, params, step = load_run(config.init_from, mesh, rules, config.random_init)
        data_cfg = run_data(run_cfg) if config.data.source == "same_as_pretraining" else config.data
        norm_pix_loss = run_cfg.mae.norm_pix_loss
        check_applies(config.eval.type, run_cfg.get("objective", "mae"))
        if config.eval.type == "objective_loss":
            frozen, frozen_params = frozen_inputs(run_cfg, mesh, rules)
    ctx = EvalContext(model, params, resolve_dataset_dir(data_cfg), data_cfg.train_split, data_cfg.val_split, mesh,
                      rules, config.seed, norm_pix_loss, run_config=run_cfg, frozen=frozen,
                      frozen_params=frozen_params)
    result = run_evaluator(ctx, config.eval)
    result.update(step=step, init_from=config.init_from)
    path = write_eval(workdir, config.name, result)
    if jax.process_index() == 0:
        print(f"{describe(config.name, config.eval.type, result)} (step {step}) -> {path}", flush=True)
    return result


def run_data(run_cfg):
    """The data a run evaluates on: its config.eval_data when that names a dataset, else its pretraining data."""
    eval_data = run_cfg.get("eval_data")
    return run_cfg.data if eval_data is None or eval_data.source == "same_as_pretraining" else eval_data


def frozen_inputs(run_cfg, mesh, rules) -> tuple:
    """(Frozen, (params,)) of the run's objective (a teacher), or (None, ()) when it has none."""
    objective = registry.get(run_cfg.objective)
    frozen = objective.frozen(run_cfg, mesh, rules) if objective.frozen else None
    if frozen is None:
        return None, ()
    return frozen, (frozen.load(run_cfg, mesh, rules, read_run_params),)


def check_applies(eval_type: str, objective_name: str) -> None:
    """A ConfigError when the evaluator means nothing for the run's objective (e.g. recon_loss of SimMIM)."""
    objective = registry.get(objective_name)
    if not supports(objective, eval_type):
        raise ConfigError(f"eval.type={eval_type!r} does not apply to a run of objective={objective_name!r} (it "
                          f"supports {sorted(objective.evaluators)})")


def load_file(config, mesh, rules) -> tuple:
    """(model, params, step: 'file', or 0 for its random init) when init_from is a weights file."""
    if config.data.source == "same_as_pretraining":
        raise ConfigError(f"init_from={config.init_from!r} is a weights file, which names no dataset: pass "
                          f"--config.data.source=arrayrecord --config.data.path=DIR (or data.source=synthetic)")
    model, params = load_weights_file(config.init_from, config.image_size, mesh, rules, config.random_init,
                                      config.seed)
    return model, params, 0 if config.random_init else "file"


def run() -> None:
    """Console-script entry point (mim-eval)."""
    run_cli(evaluate, "configs/linear_probe.py", "Directory for evals/<name>.json.")


if __name__ == "__main__":
    run()
