"""How long the train loop is blocked per async checkpoint save: wall time of `manager.save(...)`.

    JAX_PLATFORMS=cpu python benchmarks/checkpoint_blocking.py --models=B/16,L/16 --repeats=3 --dir=/tmp/ckpt_bench

For each model it builds the pretraining TrainState (MAE encoder + decoder params and AdamW moments, fp32) on
the local devices with the mesh of the default config, then saves it `repeats` times through the same
manager pretraining uses (mim_jax.train.checkpoints). The blocking time is the `save` call alone: the loop
continues while orbax writes in the background. Before each save the previous write is awaited (and timed
separately), as in a run whose saves are further apart than one write. Prints one markdown row per model.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import time

import jax

from mim_jax.config.defaults import base_config
from mim_jax.parallel.sharding import make_mesh
from mim_jax.train import checkpoints
from mim_jax.train.program import build_program, model_signature


def state_for(variant: str):
    """The fp32 TrainState (params + AdamW) of an MAE with encoder `variant` at 224 px, and its size in bytes."""
    config = base_config()
    config.model.variant = variant
    state, _ = build_program(config, make_mesh(config.mesh)).init_state(config.seed)
    size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    return state, size, model_signature(config)


def measure(variant: str, repeats: int, directory: str) -> dict:
    """Blocking seconds of each save call and seconds until each write finished."""
    state, size, signature = state_for(variant)
    shutil.rmtree(directory, ignore_errors=True)
    manager = checkpoints.checkpoint_manager(directory, max_to_keep=2, async_save=True)
    blocked, written = [], []
    for step in range(1, repeats + 1):
        start = time.perf_counter()
        checkpoints.save(manager, step, state, {"signature": signature, "step": step}, force=True)
        blocked.append(time.perf_counter() - start)
        manager.wait_until_finished()
        written.append(time.perf_counter() - start)
    manager.close()
    shutil.rmtree(directory, ignore_errors=True)
    return {"model": variant, "gib": size / 2 ** 30, "blocked": blocked, "written": written}


def main() -> None:
    """Measure each model and print the table rows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="B/16,L/16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/mim_jax_ckpt_bench")
    args = parser.parse_args()
    print(f"# {platform.node()}, {os.cpu_count()} cores, jax {jax.__version__}, devices {jax.devices()}")
    print("| model | state GiB | blocked per save s (each) | median blocked s | save written s (median) |")
    print("|---|---|---|---|---|")
    for variant in args.models.split(","):
        r = measure(variant, args.repeats, os.path.join(args.dir, variant.replace("/", "_")))
        print(f"| {r['model']} | {r['gib']:.2f} | {', '.join(f'{b:.3f}' for b in r['blocked'])} | "
              f"{statistics.median(r['blocked']):.3f} | {statistics.median(r['written']):.1f} |", flush=True)


if __name__ == "__main__":
    main()
