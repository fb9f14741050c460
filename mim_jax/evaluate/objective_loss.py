"""Validation loss of any objective: its own training loss (`objective.make_loss`) on the val split.

Xie et al. (2023, "On data scaling in masked image modeling") read the validation loss against compute. The
sampled randomness of eval batch j (MAE noise, SimMIM masks, ...) is `objective.sample` from
`fold_in(key(seed), j)` over the batch shape, so every checkpoint of a run (and every run of a study) is scored
on the same images with the same masks, on any mesh. Images get the eval transform (resize + centre crop);
drop path is off. Only full batches count (the objectives' losses are batch means, which padding would bias):
the loss is the mean over floor(n / batch_size) batches.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from mim_jax.data import pipeline
from mim_jax.errors import ConfigError
from mim_jax.objectives import registry
from mim_jax.parallel.sharding import global_batch, replicated, sharding_context
from mim_jax.train.step import DROPOUT_STREAM, step_key


def eval_config(run_config):
    """The run's config with drop path off (a deterministic forward); everything else as trained."""
    cfg = run_config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.model.drop_path = 0.0
    return cfg


def make_batch_loss(model, run_config, frozen=None) -> Callable:
    """loss(params, batch, batch_index, *frozen_params) -> scalar: the objective's loss with batch j's samples."""
    cfg = eval_config(run_config)
    objective = registry.get(cfg.objective)
    loss_fn = objective.make_loss(model, cfg, frozen)
    seed = run_config.seed

    def batch_loss(params, batch, batch_index, *frozen_params):
        key = step_key(seed, batch_index)
        inputs = {"image": batch["image"], "label": batch["label"],
                  **objective.sample(model, cfg, key, batch["image"].shape[0])}
        loss, _ = loss_fn(params, inputs, jax.random.fold_in(key, DROPOUT_STREAM), *frozen_params)
        return loss
    return batch_loss


def objective_val_loss(model, params, run_config, dataset_dir: str, split: str, *, seed: int, batch_size: int,
                       mesh, rules, max_examples: int | None = None, frozen=None,
                       frozen_params: tuple = ()) -> dict:
    """Mean objective loss over the full batches of the first `max_examples` records of `split` (None: all)."""
    n = pipeline.num_examples(dataset_dir, split)
    n = n if not max_examples else min(n, max_examples)
    num_batches = n // batch_size
    if num_batches == 0:
        raise ConfigError(f"objective_loss: split {split!r} of {dataset_dir} gives {n} examples, fewer than one "
                          f"batch of batch_size={batch_size}; lower evals.<name>.batch_size")
    cfg = run_config.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.seed = seed
    batch_loss = make_batch_loss(model, cfg, frozen)
    jitted = jax.jit(batch_loss, out_shardings=replicated(mesh))
    batches = pipeline.eval_batches(dataset_dir, split, batch_size=batch_size, image_size=cfg.model.image_size,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    max_examples=num_batches * batch_size)
    losses = []
    for index, local in enumerate(batches):
        local = {k: v for k, v in local.items() if k in ("image", "label")}
        with sharding_context(mesh, rules):
            loss = jitted(params, global_batch(local, mesh, rules), np.int32(index), *frozen_params)
        losses.append(float(jax.device_get(loss)))
    return {"loss": float(np.mean(losses)), "batch_losses": losses, "num_examples": num_batches * batch_size, "num_batches": num_batches,
            "split": split, "sample_seed": seed, "objective": cfg.objective}


def run_objective_loss(ctx: Any, e) -> dict:
    """Evaluator entry: the run's own objective loss on the val split (needs the run's config, see EvalContext)."""
    if ctx.run_config is None:
        raise ConfigError("objective_loss needs a pretraining run (its config, objective head and weights): set "
                          "init_from to a pretraining workdir (a weights file holds the encoder only)")
    return objective_val_loss(ctx.model, ctx.params, ctx.run_config, ctx.dataset_dir, ctx.val_split,
                              seed=e.sample_seed, batch_size=e.batch_size, mesh=ctx.mesh, rules=ctx.rules,
                              max_examples=e.max_examples or None, frozen=ctx.frozen,
                              frozen_params=ctx.frozen_params)
