"""Linear probe of an encoder on a dataset: extract frozen features, train the MAE-protocol head, write JSON."""
from __future__ import annotations

import json
import time

import jax

from mim_jax import workdir as run_dirs
from mim_jax.data import pipeline
from mim_jax.evaluate.features import extract_features
from mim_jax.evaluate.linear_probe import train_linear_probe
from mim_jax.models.vit import Encoder

EVALS_DIR = "evals"


def probe_encoder(encoder: Encoder, params, dataset_dir: str, train_split: str, val_split: str, probe_cfg,
                  mesh, rules, seed: int) -> dict:
    """Top-1/top-5 of a linear probe on frozen `encoder` features (train split -> val split)."""
    start = time.perf_counter()
    max_train = probe_cfg.max_train_examples or None
    extract = lambda split, limit: extract_features(
        encoder, params, dataset_dir, split, pool=probe_cfg.pool, batch_size=probe_cfg.feature_batch_size,
        mesh=mesh, rules=rules, max_examples=limit)
    train_x, train_y = extract(train_split, max_train)
    val_x, val_y = extract(val_split, None)
    result = train_linear_probe(train_x, train_y, val_x, val_y, num_classes=pipeline.num_classes(dataset_dir),
                                epochs=probe_cfg.epochs, batch_size=probe_cfg.batch_size, base_lr=probe_cfg.base_lr,
                                warmup_epochs=probe_cfg.warmup_epochs, seed=seed)
    result.update(pool=probe_cfg.pool, dataset=dataset_dir, train_split=train_split, val_split=val_split,
                  seconds=round(time.perf_counter() - start, 1))
    return result


def write_eval(workdir: str, name: str, result: dict) -> str:
    """Write WORKDIR/evals/<name>.json (process 0 only, atomically); returns the path."""
    path = run_dirs.join(workdir, EVALS_DIR, f"{name}.json")
    if jax.process_index() == 0:
        run_dirs.write_text(path, json.dumps(result, indent=2, sort_keys=True))
    return path
