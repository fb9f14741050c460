"""Plan every paper-scale config on its target TPU slice and print the markdown table for RESULTS.md.

    python benchmarks/plan_table.py [--recipe=mae] [--models=B/16,L/16]

Each row runs `python -m mim_jax.plan` in its own process (the command is printed with the row), so the
numbers are exactly what a user gets from that command. Needs the `tpu` extra (libtpu); no TPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "configs"))

import pretrain as pretrain_configs  # noqa: E402  (configs/pretrain.py)

GIB = 2 ** 30


def plan_command(model: str, recipe: str) -> list[str]:
    """The user-facing plan command for one paper size."""
    return [sys.executable, "-m", "mim_jax.plan", f"--config=configs/pretrain.py:model={model},recipe={recipe}"]


def run_plan(model: str, recipe: str) -> tuple[dict, int]:
    """(report dict, exit code) of one plan run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "plan.json")
        proc = subprocess.run(plan_command(model, recipe) + [f"--json={path}"], cwd=REPO, capture_output=True,
                              text=True)
        if proc.returncode not in (0, 1) or not os.path.exists(path):
            raise RuntimeError(f"plan of {model} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(path) as f:
            return json.load(f), proc.returncode


def table_row(model: str, recipe: str, r: dict) -> str:
    """One markdown row."""
    config = pretrain_configs.get_config(f"model={model},recipe={recipe}")
    mesh = "x".join(str(r["mesh"][a]) for a in ("data", "fsdp", "tensor"))
    gib = lambda b: f"{b / GIB:.1f}"
    return (f"| {model} | {r['params'] / 1e9:.3f}B | {r['topology']} ({r['devices']} chips) | {mesh} | "
            f"{config.model.remat} | {config.model.dtype} | {gib(r['argument_bytes'])} | {gib(r['temp_bytes'])} | "
            f"{gib(r['total_bytes'])} / {gib(r['hbm_per_device'])} ({r['hbm_fraction']:.0%}) | "
            f"{r['model_flops_per_step'] / 1e15:.2f} | {r['model_flops_per_step'] / r['xla_flops_per_step']:.3f} | "
            f"{'yes' if r['fits'] else 'NO'} | {r['compile_seconds']:.0f} |")


def main() -> None:
    """Run all plans and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="mae", choices=pretrain_configs.RECIPES)
    parser.add_argument("--models", default=",".join(pretrain_configs.PAPER_SCALE))
    args = parser.parse_args()
    print("| model | params | slice | mesh (data x fsdp x tensor) | remat | compute | arguments GiB/chip | "
          "temp GiB/chip | total / HBM GiB | model PFLOPs/step | ours / XLA FLOPs | fits | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        report, _ = run_plan(model, args.recipe)
        print(table_row(model, args.recipe, report), flush=True)
    print("\nEach row: python " + " ".join(plan_command("<model>", args.recipe)[1:]))


if __name__ == "__main__":
    main()
