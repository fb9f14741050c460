"""Evaluators inside pretraining: config.evals.<name> runs every `every_steps` and/or `at_end`.

Each run writes WORKDIR/evals/<name>.json (periodic runs overwrite it with the latest step); periodic runs also
append {'step', '<name>/<metric>': ...} rows to metrics.jsonl (a recon_loss evaluator logs its loss as '<name>').
At the end, `random_init_baseline` adds '<name>_random_init' for the same model at its initialization.
"""
from __future__ import annotations

import jax

from mim_jax.evaluate.evaluators import EvalContext, describe, headline, run_evaluator
from mim_jax.evaluate.results import write_eval
from mim_jax.train.run_log import RunLog

RANDOM_INIT_SUFFIX = "_random_init"


def logged_scalars(name: str, eval_type: str, result: dict) -> dict:
    """metrics.jsonl keys of one evaluation: '<name>' for a reconstruction loss, else '<name>/<metric>'."""
    values = headline(eval_type, result)
    if eval_type in ("recon_loss", "objective_loss"):
        return {name: values["loss"]}
    return {f"{name}/{k}": v for k, v in values.items()}


class TrainingEvals:
    """Runs config.evals during and after pretraining (every process computes, process 0 writes)."""

    def __init__(self, config, model, dataset_dir: str, workdir: str, mesh, rules, log: RunLog | None = None,
                 frozen=None, frozen_params: tuple = ()):
        self.config, self.model, self.dataset_dir, self.workdir = config, model, dataset_dir, workdir
        self.mesh, self.rules, self.log = mesh, rules, log
        self.frozen, self.frozen_params = frozen, frozen_params

    def context(self, params) -> EvalContext:
        """A fresh evaluation context (feature cache) for one set of parameters."""
        c = self.config
        return EvalContext(self.model, params, self.dataset_dir, c.data.train_split, c.data.val_split, self.mesh,
                           self.rules, c.seed, c.mae.norm_pix_loss, run_config=c, frozen=self.frozen,
                           frozen_params=self.frozen_params)

    def due(self, step: int) -> list[str]:
        """Names of the evaluators whose period divides `step`."""
        evals = self.config.evals
        return [name for name in evals if evals[name].every_steps and step % evals[name].every_steps == 0]

    def periodic(self, step: int, params) -> dict:
        """Run the evaluators due at `step`; returns {name: result}."""
        names = self.due(step)
        ctx = self.context(params) if names else None
        return {name: self._run(name, name, ctx, step, log=True) for name in names}

    def at_end(self, step: int, params, random_init_params=None) -> dict:
        """Run the at_end evaluators (and their random-init baselines when `random_init_params` is given)."""
        evals = self.config.evals
        names = [name for name in evals if evals[name].at_end]
        results, ctx = {}, self.context(params)
        for name in names:
            results[name] = self._run(name, name, ctx, step, log=False)
        baselines = [name for name in names if evals[name].random_init_baseline]
        if baselines and random_init_params is not None:
            ctx0 = self.context(random_init_params())
            for name in baselines:
                results[name + RANDOM_INIT_SUFFIX] = self._run(name, name + RANDOM_INIT_SUFFIX, ctx0, 0, log=False)
        return results

    def _run(self, name: str, out_name: str, ctx: EvalContext, step: int, log: bool) -> dict:
        e = self.config.evals[name]
        result = run_evaluator(ctx, e)
        result["step"] = step
        path = write_eval(self.workdir, out_name, result)
        if log and self.log is not None:
            self.log.write_eval(step, logged_scalars(name, e.type, result))
        if jax.process_index() == 0:
            print(f"{describe(out_name, e.type, result)} (step {step}, {result['seconds']}s) -> {path}", flush=True)
        return result
