"""Orbax checkpoints of the train state in WORKDIR/checkpoints/<step>/, async, keep N, resume from latest."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import orbax.checkpoint as ocp

from mim_jax import workdir as run_dirs
from mim_jax.configuration import ConfigError

CHECKPOINT_DIR = "checkpoints"


def checkpoint_manager(workdir: str, max_to_keep: int, async_save: bool) -> ocp.CheckpointManager:
    """Manager over WORKDIR/checkpoints saving {state, meta} items."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                           create=True)
    return ocp.CheckpointManager(run_dirs.join(run_dirs.resolve(workdir), CHECKPOINT_DIR), options=options,
                                 item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    """Start an (async) save of `state` and JSON `meta` at `step`; returns whether a save started."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    return manager.save(step, args=args, force=force)


def model_signature(config) -> dict:
    """The config fields that fix parameter shapes; a checkpoint only restores into a matching model."""
    model = config.model.to_dict()
    for key in ("dtype", "remat", "mask_ratio", "norm_pix_loss"):
        model.pop(key, None)
    return {"objective": config.objective, "model": model}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def check_signature(saved: dict, expected: dict, directory: str) -> None:
    """Raise naming every field where the checkpoint's model differs from the config's."""
    saved_flat, expected_flat = _flatten(saved), _flatten(expected)
    diffs = [f"{k}: checkpoint {saved_flat.get(k)!r} vs config {expected_flat.get(k)!r}"
             for k in sorted(set(saved_flat) | set(expected_flat)) if saved_flat.get(k) != expected_flat.get(k)]
    if diffs:
        raise ConfigError(f"the checkpoint in {directory} belongs to another model ({'; '.join(diffs)}); "
                         f"use a new --workdir or set these config fields to the checkpoint's values")


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any,
                   signature: Optional[dict] = None) -> Optional[tuple[int, Any, dict]]:
    """(step, state, meta) of the latest complete checkpoint, resharded onto `abstract_state`; None if none."""
    step = manager.latest_step()
    if step is None:
        return None
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    if signature is not None:
        check_signature(meta.get("signature", {}), json.loads(json.dumps(signature)), str(manager.directory))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    logging.info("restored checkpoint step %d from %s", step, manager.directory)
    return step, restored["state"], meta


def locate_checkpoint(init_from: str) -> tuple[str, Optional[int]]:
    """(run workdir, step or None for latest) from a workdir or a WORKDIR/checkpoints/<step> path."""
    path = os.path.abspath(os.path.expanduser(init_from))
    parent, name = os.path.split(path.rstrip("/"))
    if name.isdigit() and os.path.basename(parent) == CHECKPOINT_DIR:
        return os.path.dirname(parent), int(name)
    return path, None


def load_run_config(run_dir: str):
    """The resolved config a pretraining run wrote to RUN_DIR/config.json."""
    import ml_collections
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"init_from={run_dir!r} has no config.json; point it at a pretraining workdir "
                          f"(or WORKDIR/checkpoints/<step>)")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))
