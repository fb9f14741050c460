"""Where a pretraining run starts, in priority order (the choice is printed):

1. the workdir's own latest complete checkpoint (re-running the same command resumes);
2. `config.ckpt.resume_from`: another run's full state (params, optimizer, step), e.g. a copy onto a new workdir;
3. `config.init_from`: weights only (`config.init_from_subtree`, default the encoder) into a fresh state at step 0,
   with a report of loaded / missing / unexpected parameters;
4. scratch.
"""
from __future__ import annotations

import json
from typing import Any

import jax
from flax import traverse_util

from mim_jax import workdir as run_dirs
from mim_jax.convert.loading import load_any
from mim_jax.errors import ConfigError
from mim_jax.train import checkpoints
from mim_jax.train.program import Program, model_signature
from mim_jax.train.runs import load_run

INIT_REPORT_FILE = "init_report.json"


def say(message: str) -> None:
    """Print one start-up line (process 0)."""
    if jax.process_index() == 0:
        print(message, flush=True)


def restore_from_path(path: str, program: Program, signature: dict) -> tuple[int, Any]:
    """(step, full state) from another run's dir (latest readable step) or DIR/checkpoints/<step>, on this run's mesh.

    The other run's directory is only read: unreadable steps are skipped with a warning, never moved.
    """
    run_dir, step = run_dirs.locate_checkpoint(path)
    with checkpoints.checkpoint_reader(run_dir) as manager:
        if step is None:
            restored = checkpoints.restore_latest(manager, program.abstract_state, signature, set_aside=False)
            if restored is None:
                raise ConfigError(f"ckpt.resume_from={path!r} has no checkpoint; point it at a run with checkpoints/")
            return restored[0], restored[1]
        if step not in manager.all_steps():
            raise ConfigError(f"ckpt.resume_from={path!r}: no complete checkpoint {step} "
                              f"(available: {list(manager.all_steps())})")
        return step, checkpoints.restore_step(manager, step, program.abstract_state, signature)[0]


def _flat(tree: Any) -> dict:
    return traverse_util.flatten_dict(tree, sep="/") if tree else {}


def merge_weights(params: Any, source: Any, subtree: str, shardings: Any) -> tuple[Any, dict]:
    """`params` with the leaves of `source` under `subtree` ('' = all) copied in -> (params, report)."""
    if subtree and subtree not in source:
        raise ConfigError(f"init_from_subtree={subtree!r}: the init_from run has no such parameter subtree "
                          f"(it has {sorted(source)})")
    if subtree and subtree not in params:
        raise ConfigError(f"init_from_subtree={subtree!r}: this model has no such parameter subtree "
                          f"(it has {sorted(params)})")
    ours = _flat(params[subtree] if subtree else params)
    theirs = _flat(source[subtree] if subtree else source)
    loaded = sorted(set(ours) & set(theirs))
    bad = [f"{k}: init_from {tuple(theirs[k].shape)} vs this model {tuple(ours[k].shape)}"
           for k in loaded if theirs[k].shape != ours[k].shape]
    if bad:
        raise ConfigError(f"init_from: parameter shapes differ under {subtree or 'params'!r} ({'; '.join(bad[:4])}"
                          f"{'; ...' if len(bad) > 4 else ''}); set init_from_subtree to a part that matches")
    target = _flat(shardings[subtree] if subtree else shardings)
    merged = {**ours, **{k: jax.device_put(theirs[k], target[k]) for k in loaded}}
    merged = traverse_util.unflatten_dict(merged, sep="/")
    params = {**params, subtree: merged} if subtree else merged
    report = {"loaded": loaded, "missing": sorted(set(ours) - set(theirs)),
              "unexpected": sorted(set(theirs) - set(ours))}
    return params, report


def format_report(report: dict, limit: int = 5) -> str:
    """'loaded N, missing M [a, b, ...], unexpected K [...]'."""
    def names(keys):
        return f" [{', '.join(keys[:limit])}{', ...' if len(keys) > limit else ''}]" if keys else ""
    return (f"loaded {len(report['loaded'])}, missing {len(report['missing'])}{names(report['missing'])}, "
            f"unexpected {len(report['unexpected'])}{names(report['unexpected'])} parameter arrays")


def init_source(init_from: str, program: Program) -> tuple[Any, Any]:
    """(params, step) of init_from: a run dir / RUN/checkpoints/<step>, or a weights file mim_jax.convert reads.

    A file (official MAE / MAWS / DINO / CLIP .pth or .safetensors, timm export, mim_jax format) gives
    {'encoder'[, 'decoder']} on the host; its step is reported as 'file'.
    """
    if not run_dirs.is_local_file(init_from):
        _, _, source, step = load_run(init_from, program.mesh, program.rules)
        return source, step
    return load_any(init_from)[2], "file"


def init_weights(config, program: Program, state: Any) -> tuple[Any, dict]:
    """`state` with the weights of config.init_from loaded into config.init_from_subtree -> (state, report).

    The objective's `adapt_init` (if any) sees the source weights first (e.g. WSP: sin-cos -> learned positions).
    """
    source, step = init_source(config.init_from, program)
    notes = []
    if program.objective.adapt_init is not None:
        source, notes = program.objective.adapt_init(jax.device_get(source), config, config.init_from)
    params, report = merge_weights(state.params, source, config.init_from_subtree, program.shardings.params)
    report.update(step=step, notes=notes)
    say(f"Initializing weights from {config.init_from} (step {step}, subtree "
        f"{config.init_from_subtree or 'all'!r}): {format_report(report)}{''.join('; ' + n for n in notes)}; "
        f"optimizer state and step start fresh")
    return state.replace(params=params), report


def write_report(workdir: str, report: dict) -> None:
    """WORKDIR/init_report.json: what init_from loaded (process 0)."""
    if jax.process_index() == 0:
        run_dirs.write_text(run_dirs.join(workdir, INIT_REPORT_FILE),
                            json.dumps({k: v if k != "step" else str(v) for k, v in report.items()}, indent=1))


def start_state(config, program: Program, manager, workdir: str = "") -> tuple[int, Any]:
    """(start_step, state) by the priority rules above; prints which one applied (init_from: and writes
    WORKDIR/init_report.json when `workdir` is given)."""
    signature = model_signature(config)
    restored = checkpoints.restore_latest(manager, program.abstract_state, signature)
    if restored is not None:
        say(f"Resuming from checkpoint step {restored[0]} in {manager.directory}")
        return restored[0], restored[1]
    if config.ckpt.resume_from:
        step, state = restore_from_path(config.ckpt.resume_from, program, signature)
        say(f"Resuming from checkpoint step {step} of ckpt.resume_from={config.ckpt.resume_from} "
            f"(no checkpoint in {manager.directory} yet)")
        return step, state
    state, _ = program.init_state(config.seed)
    if config.init_from:
        state, report = init_weights(config, program, state)
        if workdir:
            write_report(workdir, report)
        return 0, state
    say("Starting from scratch (no checkpoint in workdir, no ckpt.resume_from or init_from)")
    return 0, state
