"""Evaluation results on disk: WORKDIR/evals/<name>.json, written by process 0 atomically."""
from __future__ import annotations

import json

import jax

from mim_jax import workdir as run_dirs

EVALS_DIR = "evals"


def write_eval(workdir: str, name: str, result: dict) -> str:
    """Write WORKDIR/evals/<name>.json (process 0 only, atomically; local or gs:// workdirs); returns the path."""
    path = run_dirs.join(workdir, EVALS_DIR, f"{name}.json")
    if jax.process_index() == 0:
        run_dirs.write_text(path, json.dumps(result, indent=2, sort_keys=True))
    return path
