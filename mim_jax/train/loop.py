"""The pretraining loop and its CLI (python -m mim_jax.pretrain --config=configs/demo.py --workdir=DIR).

Generic over objectives: `config.objective` resolves (objectives.registry) to the model, loss, step randomness
and frozen inputs; this loop only feeds batches, logs, checkpoints and evaluates. Re-running the same command on
the same workdir resumes from the latest complete checkpoint (train/resume.py has the start rules). SIGTERM /
SIGUSR1 save a checkpoint at the next step and exit 75 (train/preemption.py); a non-finite loss follows
optim.nonfinite (train/nonfinite.py).
"""
from __future__ import annotations

import sys

import jax

from mim_jax import workdir as run_dirs
from mim_jax.config import validation
from mim_jax.config.cli import run_cli
from mim_jax.data import pipeline, subsets
from mim_jax.data.sources import resolve_dataset_dir
from mim_jax.evaluate.evaluators import headline
from mim_jax.evaluate.in_training import RANDOM_INIT_SUFFIX, TrainingEvals
from mim_jax.objectives import registry
from mim_jax.parallel import distributed
from mim_jax.parallel.chips import peak_flops_per_device
from mim_jax.parallel.sharding import global_batch, make_mesh
from mim_jax.train import checkpoints, preemption, resume
from mim_jax.train.nonfinite import NonFiniteError, NonFiniteWatch
from mim_jax.train.program import (
    Program,
    build_program,
    model_signature,
    train_flops_per_step,
)
from mim_jax.train.run_log import RunLog
from mim_jax.train.runs import read_run_params

# Fake CPU devices: bound the collective steps queued at once (docs/testing.md): sync this often on CPU.
CPU_SYNC_EVERY = 10


def write_config(workdir: str, config) -> None:
    """Save the resolved config as WORKDIR/config.json (process 0)."""
    if jax.process_index() == 0:
        run_dirs.write_text(run_dirs.join(workdir, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True))


def total_peak_flops(mesh) -> float | None:
    """Summed bf16 peak FLOP/s of the mesh devices (None on CPU or an unknown chip: no MFU then)."""
    peaks = [peak_flops_per_device(d) for d in mesh.devices.flat]
    return None if None in peaks else sum(peaks)


def fetch_metrics(metrics: dict) -> dict:
    """Device metrics -> python floats (the non-finite policy has checked them already)."""
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train(config, workdir: str) -> dict:
    """Run (or resume) pretraining to config.total_steps; returns the last logged metrics row."""
    distributed.initialize()  # first: joins the other processes of a multi-process run before jax starts
    registry.validate(config)
    workdir = validation.check_workdir(workdir)
    mesh = make_mesh(config.mesh)
    program = build_program(config, mesh, jax.process_count())  # mesh / batch / sharding errors come first
    dataset_dir = resolve_dataset_dir(config.data)
    write_config(workdir, config)
    model, rules = program.model, program.rules
    batch_size, total = config.data.global_batch_size, config.total_steps
    keep_steps = tuple(config.ckpt.get("keep_steps", ()))
    # Leaving the block closes the manager: it waits for the last (async) save and stops orbax's threads.
    with checkpoints.checkpoint_manager(workdir, config.ckpt.max_to_keep, config.ckpt.async_save,
                                        cleanup_tmp=True, keep_steps=keep_steps) as manager:
        start_step, state = resume.start_state(config, program, manager, workdir)
        frozen_args = frozen_params(config, program)
        train_step = program.step
        batches = pretrain_batches(config, dataset_dir, start_step)
        log = RunLog(workdir, total, batch_size, start_step, flops_per_step=train_flops_per_step(config),
                     peak_flops=total_peak_flops(mesh))
        meta = {"signature": model_signature(config)}
        evals = TrainingEvals(config, model, eval_dataset_dir(config, dataset_dir), workdir, mesh, rules, log,
                              program.frozen, frozen_args)
        on_cpu = jax.devices()[0].platform == "cpu"
        nonfinite = NonFiniteWatch(config.optim.nonfinite, config.optim.max_consecutive_skips)
        row = {}
        with preemption.watch():
            try:
                for step in range(start_step + 1, total + 1):
                    state, metrics = train_step(state, global_batch(next(batches), mesh, rules), *frozen_args)
                    nonfinite.add(step, metrics)
                    if step % config.log.every_steps == 0 or step == total:
                        nonfinite.check()
                        row = log.write(step, fetch_metrics(metrics))
                    elif on_cpu and step % CPU_SYNC_EVERY == 0:
                        nonfinite.check()  # fetches the pending metrics: a sync point
                    preempted = preemption.reached_preemption(step)  # every step, on every process
                    forced = step == total or preempted or step in keep_steps
                    if step % config.ckpt.every_steps == 0 or forced:
                        nonfinite.check()  # never save a state that a non-finite step produced
                        checkpoints.save(manager, step, state, {**meta, "step": step}, force=forced)
                    if preempted:
                        raise preemption.Preempted(step)
                    evals.periodic(step, state.params)
            finally:
                log.close()
    run_end_evals(config, evals, state.params, program)
    return row


def pretrain_batches(config, dataset_dir: str, start_step: int):
    """This process's batches of steps start_step + 1, ... (config.data: crops, RandAugment, label sets, subset)."""
    d = config.data
    return pipeline.train_batches(
        dataset_dir, d.train_split, global_batch_size=d.global_batch_size, image_size=config.model.image_size,
        seed=config.seed, start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count(), crop_scale=tuple(d.crop_scale), crop_ratio=tuple(d.crop_ratio),
        num_workers=d.num_workers, subset=subsets.SubsetSpec.from_config(d.subset), max_labels=d.max_labels,
        auto_augment=d.get("auto_augment", ""))


def eval_dataset_dir(config, dataset_dir: str) -> str:
    """The evaluators' dataset: the pretraining one, or config.eval_data when it names another."""
    eval_data = config.get("eval_data")
    if eval_data is None or eval_data.source == "same_as_pretraining":
        return dataset_dir
    return resolve_dataset_dir(eval_data)


def frozen_params(config, program: Program) -> tuple:
    """() without frozen inputs; (their params,) otherwise (a teacher): loaded once, sharded, never updated."""
    if program.frozen is None:
        return ()
    return (program.frozen.load(config, program.mesh, program.rules, read_run_params),)


def run_end_evals(config, evals: TrainingEvals, params, program: Program) -> dict:
    """The at_end evaluators of config.evals on the final model (and at random init where asked)."""
    results = evals.at_end(config.total_steps, params, lambda: program.init_state(config.seed)[0].params)
    for name in config.evals:
        if name + RANDOM_INIT_SUFFIX in results and jax.process_index() == 0:
            eval_type = config.evals[name].type
            base = headline(eval_type, results[name + RANDOM_INIT_SUFFIX])
            for key, value in headline(eval_type, results[name]).items():
                print(f"{name} {key}: pretrained {value:.4f} vs random init {base[key]:.4f} "
                      f"({value - base[key]:+.4f})", flush=True)
    return results


def train_cli(config, workdir: str) -> int:
    """train() for the CLI: exit 75 after a preemption checkpoint, 1 after a non-finite loss (one line each)."""
    try:
        train(config, workdir)
    except preemption.Preempted as preempted:
        resume.say(str(preempted))
        return preemption.PREEMPTED_EXIT_CODE
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


def run() -> None:
    """Console-script entry point (mim-pretrain)."""
    run_cli(train_cli, "configs/demo.py", "Run directory: config.json, metrics.jsonl, checkpoints/, evals/.")


if __name__ == "__main__":
    run()
