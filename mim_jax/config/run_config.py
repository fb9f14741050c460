"""The resolved config a pretraining run wrote (RUN_DIR/config.json), with fields renamed since brought up to date."""
from __future__ import annotations

import json
import os

import ml_collections

from mim_jax import workdir as run_dirs
from mim_jax.errors import ConfigError

# Fields that moved into an objective's block: old dotted name -> new dotted name.
RENAMED = {"model.mask_ratio": "mae.mask_ratio", "model.norm_pix_loss": "mae.norm_pix_loss",
           "model.decoder": "mae.decoder"}


def upgrade(config: dict) -> dict:
    """A config (or checkpoint signature) dict written before the renames, with its fields moved to the new names."""
    config = json.loads(json.dumps(config))  # a deep copy
    for old, new in RENAMED.items():
        (old_block, old_field), (new_block, new_field) = old.split("."), new.split(".")
        if old_field in config.get(old_block, {}):
            config.setdefault(new_block, {})[new_field] = config[old_block].pop(old_field)
    return config


def read_run_config(path: str) -> ml_collections.ConfigDict:
    """The config of the run at RUN_DIR or RUN_DIR/checkpoints/<step> (old field names upgraded)."""
    run_dir, _ = run_dirs.locate_checkpoint(path)
    file = os.path.join(run_dir, "config.json")
    if not os.path.isfile(file):
        raise ConfigError(f"init_from={run_dir!r} has no config.json; point it at a pretraining workdir "
                          f"(or WORKDIR/checkpoints/<step>)")
    with open(file) as f:
        return ml_collections.ConfigDict(upgrade(json.load(f)))
