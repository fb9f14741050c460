"""Evaluation results on disk: WORKDIR/evals/<name>.json, written by process 0 atomically."""
from __future__ import annotations

import json
import os

import jax

EVALS_DIR = "evals"


def write_eval(workdir: str, name: str, result: dict) -> str:
    """Write WORKDIR/evals/<name>.json (process 0 only, atomically); returns the path."""
    path = os.path.join(workdir, EVALS_DIR, f"{name}.json")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
        os.replace(path + ".tmp", path)
    return path
