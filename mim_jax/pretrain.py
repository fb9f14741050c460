"""Pretraining CLI and loop: python -m mim_jax.pretrain --config=configs/demo.py --workdir=DIR.

Re-running the same command on the same workdir resumes from the latest complete checkpoint.
"""
from __future__ import annotations

import math
import os

import jax
import numpy as np

from mim_jax import checkpoints, configuration, optim
from mim_jax.cli_flags import run_cli
from mim_jax.configuration import ConfigError
from mim_jax.data import pipeline
from mim_jax.data.sources import resolve_dataset_dir
from mim_jax.evaluate.probe_run import probe_encoder, write_eval
from mim_jax.models.mae import MAE, mae_from_config
from mim_jax.run_log import RunLog
from mim_jax.sharding import data_parallel_size, global_batch, logical_rules, make_mesh
from mim_jax.train_step import abstract_train_state, create_train_state, make_train_step


# Fake CPU devices dead-lock when too many collective steps are queued (see DEPS.md): sync this often on CPU.
CPU_SYNC_EVERY = 10


def write_config(workdir: str, config) -> None:
    """Save the resolved config as WORKDIR/config.json (process 0)."""
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))


def check_batch_layout(config, mesh, rules) -> None:
    """The global batch must split evenly over processes and over the data-parallel devices."""
    batch = config.data.global_batch_size
    dp = data_parallel_size(mesh, rules)
    if batch % dp or batch % jax.process_count():
        raise ConfigError(f"data.global_batch_size={batch} is not divisible by the data-parallel size {dp} "
                          f"(mesh {dict(mesh.shape)}) and process count {jax.process_count()}; "
                          f"use a multiple of {math.lcm(dp, jax.process_count())}")


def restore_or_init(config, model: MAE, tx, mesh, rules, manager):
    """(start_step, state, shardings): the workdir's latest checkpoint if any, else a fresh sharded init."""
    abstract, shardings = abstract_train_state(model, tx, mesh, rules, config.seed)
    restored = checkpoints.restore_latest(manager, abstract, checkpoints.model_signature(config))
    if restored is not None:
        step, state, _ = restored
        print(f"Resuming from checkpoint step {step} in {manager.directory}", flush=True)
        return step, state, shardings
    state, _ = create_train_state(model, tx, mesh, rules, config.seed)
    print("Starting from scratch (no checkpoint in workdir)", flush=True)
    return 0, state, shardings


def fetch_metrics(metrics: dict, step: int) -> dict:
    """Device metrics -> python floats; a non-finite loss stops the run naming the step."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not np.isfinite(values["loss"]):
        raise FloatingPointError(f"non-finite loss {values['loss']} at step {step}; no checkpoint was written "
                                 f"for it. Lower optim.base_lr or enable optim.grad_clip_norm and resume.")
    return values


def train(config, workdir: str) -> dict:
    """Run (or resume) pretraining to config.total_steps; returns the last logged metrics row."""
    configuration.validate(config)
    workdir = configuration.check_workdir(workdir)
    dataset_dir = resolve_dataset_dir(config.data)
    write_config(workdir, config)
    mesh = make_mesh(config.mesh)
    rules = logical_rules(config.mesh)
    check_batch_layout(config, mesh, rules)

    model = mae_from_config(config.model)
    batch_size, total = config.data.global_batch_size, config.total_steps
    schedule = optim.learning_rate_schedule(config.optim, batch_size, total)
    tx = optim.make_optimizer(config.optim, batch_size, total)
    manager = checkpoints.checkpoint_manager(workdir, config.ckpt.max_to_keep, config.ckpt.async_save)
    start_step, state, shardings = restore_or_init(config, model, tx, mesh, rules, manager)
    train_step = make_train_step(model, schedule, config.seed, config.model.norm_pix_loss, mesh, rules,
                                 shardings, batch_size)
    batches = pipeline.train_batches(
        dataset_dir, config.data.train_split, global_batch_size=batch_size, image_size=config.model.image_size,
        seed=config.seed, start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count(), crop_scale=tuple(config.data.crop_scale),
        crop_ratio=tuple(config.data.crop_ratio), num_workers=config.data.num_workers)
    log = RunLog(workdir, total, batch_size, start_step)
    meta = {"signature": checkpoints.model_signature(config)}
    on_cpu = jax.devices()[0].platform == "cpu"
    row = {}
    for step in range(start_step + 1, total + 1):
        state, metrics = train_step(state, global_batch(next(batches), mesh, rules))
        if step % config.log.every_steps == 0 or step == total:
            row = log.write(step, fetch_metrics(metrics, step))
        elif on_cpu and step % CPU_SYNC_EVERY == 0:
            jax.block_until_ready(metrics)
        if step % config.ckpt.every_steps == 0 or step == total:
            checkpoints.save(manager, step, state, {**meta, "step": step}, force=step == total)
    manager.wait_until_finished()
    log.close()
    run_end_evals(config, model, state.params, dataset_dir, workdir, mesh, rules)
    return row


def random_init_encoder_params(config, model: MAE, mesh, rules):
    """The encoder parameters this run started from (same seed, same init)."""
    tx = optim.make_optimizer(config.optim, config.data.global_batch_size, config.total_steps)
    state, _ = create_train_state(model, tx, mesh, rules, config.seed)
    return state.params["encoder"]


def run_end_evals(config, model: MAE, params, dataset_dir: str, workdir: str, mesh, rules) -> None:
    """Linear probe of the final encoder (and of its random init) when config.evals asks for it."""
    probe_cfg = config.evals.linear_probe
    if not probe_cfg.at_end:
        return
    runs = [("linear_probe", params["encoder"])]
    if probe_cfg.random_init_baseline:
        runs.append(("linear_probe_random_init", random_init_encoder_params(config, model, mesh, rules)))
    results = {}
    for name, encoder_params in runs:
        result = probe_encoder(model.encoder, encoder_params, dataset_dir, config.data.train_split,
                               config.data.val_split, probe_cfg, mesh, rules, config.seed)
        result["step"] = config.total_steps if name == "linear_probe" else 0
        path = write_eval(workdir, name, result)
        results[name] = result
        print(f"{name}: top1 {result['top1']:.4f} top5 {result['top5']:.4f} "
              f"({result['num_val']} val images, {result['seconds']}s) -> {path}", flush=True)
    if len(results) == 2:
        gain = results["linear_probe"]["top1"] - results["linear_probe_random_init"]["top1"]
        print(f"linear probe top-1: pretrained {results['linear_probe']['top1']:.2%} vs random init "
              f"{results['linear_probe_random_init']['top1']:.2%} ({gain * 100:+.1f} points)", flush=True)


def run() -> None:
    """Console-script entry point (mim-pretrain)."""
    run_cli(train, "configs/demo.py", "Run directory: config.json, metrics.jsonl, checkpoints/, evals/.")


if __name__ == "__main__":
    run()
