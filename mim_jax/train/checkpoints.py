"""Orbax checkpoints of the train state in WORKDIR/checkpoints/<step>/, async, keep N, resume from latest.

Safe saves: orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it when complete, so an
interrupted save is never restored; the pretraining manager removes such leftovers when it starts. A step
that is complete by name but cannot be read (files truncated or removed) is moved to
WORKDIR/checkpoints_damaged/<step> with a warning, and the previous step is restored instead.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mim_jax import workdir as run_dirs
from mim_jax.config.run_config import upgrade
from mim_jax.errors import ConfigError

CHECKPOINT_DIR = run_dirs.CHECKPOINT_DIR
DAMAGED_DIR = "checkpoints_damaged"


def checkpoint_manager(workdir: str, max_to_keep: int, async_save: bool,
                       cleanup_tmp: bool = False, keep_steps: Sequence[int] = ()) -> ocp.CheckpointManager:
    """Manager over WORKDIR/checkpoints saving {state, meta} items.

    `cleanup_tmp` removes unfinished saves left by a killed run: only for the run that owns the workdir
    (a reader, e.g. an evaluation, must not delete the save a live run is writing). `keep_steps` are kept
    besides the latest `max_to_keep` (a study's branch points: train/branch points of shorter runs).
    """
    keep: dict = {"max_to_keep": max_to_keep}
    if keep_steps:
        policies = ocp.checkpoint_managers
        keep = {"preservation_policy": policies.AnyPreservationPolicy([
            policies.LatestN(max_to_keep), policies.CustomSteps(list(keep_steps))])}
    options = ocp.CheckpointManagerOptions(**keep, enable_async_checkpointing=async_save,
                                           create=True, cleanup_tmp_directories=cleanup_tmp)
    return ocp.CheckpointManager(run_dirs.join(run_dirs.resolve(workdir), CHECKPOINT_DIR), options=options,
                                 item_names=("state", "meta"))


def checkpoint_reader(workdir: str) -> ocp.CheckpointManager:
    """Read-only manager over another run's WORKDIR/checkpoints: it never creates, deletes or cleans up anything."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None, save_interval_steps=0,
                                           cleanup_tmp_directories=False)
    return ocp.CheckpointManager(run_dirs.join(run_dirs.resolve(workdir), CHECKPOINT_DIR), options=options,
                                 item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    """Start an (async) save of `state` and JSON `meta` at `step`; returns whether a save started."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    return manager.save(step, args=args, force=force)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def check_signature(saved: dict, expected: dict, directory: str) -> None:
    """Raise naming every field where the checkpoint's model differs from the config's."""
    saved_flat, expected_flat = _flatten(upgrade(saved)), _flatten(expected)
    diffs = [f"{k}: checkpoint {saved_flat.get(k)!r} vs config {expected_flat.get(k)!r}"
             for k in sorted(set(saved_flat) | set(expected_flat)) if saved_flat.get(k) != expected_flat.get(k)]
    if diffs:
        raise ConfigError(f"the checkpoint in {directory} belongs to another model ({'; '.join(diffs)}); "
                         f"use a new --workdir or set these config fields to the checkpoint's values")


def restore_step(manager: ocp.CheckpointManager, step: int, abstract_state: Any,
                 signature: Optional[dict] = None) -> tuple[Any, dict]:
    """(state, meta) of checkpoint `step`, resharded onto `abstract_state`, after the model-signature check."""
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if signature is not None:
        check_signature(meta.get("signature", {}), json.loads(json.dumps(signature)), str(manager.directory))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"], meta


def set_aside_damaged(manager: ocp.CheckpointManager, step: int) -> str:
    """Move an unreadable step to WORKDIR/checkpoints_damaged/<step> (process 0; all processes wait)."""
    source = os.path.join(str(manager.directory), str(step))
    target = os.path.join(os.path.dirname(str(manager.directory)), DAMAGED_DIR, str(step))
    if os.path.exists(target):
        target += f".{int(time.time())}"
    multihost_utils.sync_global_devices(f"mim_jax_damaged_{step}_read")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(source, target)
    multihost_utils.sync_global_devices(f"mim_jax_damaged_{step}_moved")
    manager.reload()
    return target


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, signature: Optional[dict] = None,
                   set_aside: bool = True) -> Optional[tuple[int, Any, dict]]:
    """(step, state, meta) of the latest readable checkpoint, resharded onto `abstract_state`; None if none.

    Steps that fail to read are reported with a warning naming them once an older step restores, and set
    aside when `set_aside` (the run owns the directory); when no step can be read nothing is moved and a
    ConfigError names the first failure.
    """
    damaged: list[tuple[int, Exception]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state, meta = restore_step(manager, step, abstract_state, signature)
        except ConfigError:
            raise
        except Exception as err:  # orbax / tensorstore raise many types for missing or truncated files
            damaged.append((step, err))
            continue
        movable = set_aside and not run_dirs.is_remote(str(manager.directory))  # bucket "dirs" do not rename
        for bad_step, err in damaged:
            report_damaged(manager, bad_step, err, set_aside_damaged(manager, bad_step) if movable else None)
        # debug: the callers print the step they resume or load in their own words (an absl-formatted INFO
        # line here duplicated "Resuming from checkpoint step N" on the console)
        logging.getLogger(__name__).debug("restored checkpoint step %d from %s", step, manager.directory)
        return step, state, meta
    if damaged:
        step, err = damaged[0]
        raise ConfigError(f"no checkpoint in {manager.directory} can be read (steps {[s for s, _ in damaged]}; "
                          f"step {step}: {type(err).__name__}: {_first_line(err)}); move the directory away to "
                          f"start over, or fix the files")
    return None


def _first_line(err: Exception) -> str:
    return (str(err).splitlines() or [""])[0][:300]


def report_damaged(manager: ocp.CheckpointManager, step: int, err: Exception, target: Optional[str]) -> None:
    """One warning line (process 0) naming the unreadable step, why, and where it was moved (if it was)."""
    if jax.process_index() == 0:
        moved = f"moved it to {target}" if target else "left it in place"
        print(f"Warning: checkpoint {manager.directory}/{step} is damaged ({type(err).__name__}: {_first_line(err)});"
              f" {moved}; falling back to the previous complete step", file=sys.stderr, flush=True)
