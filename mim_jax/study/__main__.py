"""python -m mim_jax.study run|status|collect (console script: mim-study).

    run     --config=configs/studies/<name>.py[:arg] --root=DIR [--cells=REGEX] [--launcher=local|slurm|tpu]
            [--dry_run] [--plan] [--set=field=value ...] [-- launcher options, e.g. --project=P --zone=Z]
    status  --root=DIR
    collect --root=DIR   -> DIR/study.csv, DIR/study.md, DIR/plots/*.{png,svg}

A bad input (unknown axis value, a --cells regex that matches nothing, a root holding another study, a cell that
needs an objective or model that is not there) fails in one line, exit 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mim_jax import console  # noqa: F401  (first: quiet library start-up, before TensorFlow loads)
from mim_jax.errors import ConfigError
from mim_jax.study import collect, plots, runner


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Subcommand and its flags; what follows `--` goes to the cluster launcher."""
    argv = list(argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m mim_jax.study", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or submit the cells of a study")
    run.add_argument("--config", required=True, help="configs/studies/<name>.py[:arg]")
    run.add_argument("--root", required=True, help="directory holding one run directory per cell")
    run.add_argument("--cells", default="", help="regex: only the cells whose name matches")
    run.add_argument("--launcher", default="local", choices=runner.LAUNCHERS)
    run.add_argument("--dry_run", action="store_true", help="print the jobs and the chip-hour plan, run nothing")
    run.add_argument("--plan", action="store_true", help="check every selected cell with mim_jax.plan (libtpu)")
    run.add_argument("--set", action="append", default=[], help="field=value set in every cell (repeatable)")
    for name in ("status", "collect"):
        p = sub.add_parser(name, help=f"{name} of the study under --root")
        p.add_argument("--root", required=True)
        p.add_argument("--config", default="", help="(ignored: the root records its study)")
    args = parser.parse_args(argv)
    args.launcher_options = extra
    return args


def plan_cells(plan: runner.Plan) -> int:
    """mim_jax.plan of every selected cell on its planned slice; 0 when all fit."""
    from mim_jax.cluster.plan import format_report, parse_topology
    from mim_jax.cluster.plan import plan as plan_memory
    worst = 0
    for cell in plan.cells:
        config = plan.configs[cell.name]
        if not config.plan.topology:
            raise ConfigError(f"cell {cell.name}: plan.topology is empty; the study must name each cell's slice")
        report = plan_memory(config, parse_topology(config.plan.topology))
        print(f"[plan] {cell.name}\n{format_report(report)}", flush=True)
        worst = worst or (0 if report.fits else 1)
    return worst


def collect_root(root: str) -> int:
    """Write study.csv, study.md and the plots; print where."""
    study = collect.read_study(root)
    rows = collect.collect_rows(root)
    collect.write_csv(rows, os.path.join(root, "study.csv"))
    collect.write_markdown(rows, os.path.join(root, "study.md"), f"Study {study['study']}")
    metric = runner.load_study(study["spec"]).metric if os.path.exists(study["spec"].split(":")[0]) else ""
    drawn = plots.write_plots(root, rows, study["study"], metric)
    print(f"[study] {len(rows)} cells -> {root}/study.csv, {root}/study.md; plots: "
          + ", ".join(f"{k} ({v} series)" for k, v in drawn.items()), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry; returns the exit status (2 with one line for a bad input)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "status":
            print("\n".join(collect.status_lines(os.path.abspath(args.root))), flush=True)
            return 0
        if args.command == "collect":
            return collect_root(os.path.abspath(args.root))
        plan = runner.prepare(args.config, args.root, args.cells, args.set)
        if args.plan:
            return plan_cells(plan)
        return runner.run(plan, args.launcher, args.dry_run, args.launcher_options)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2


def run() -> None:
    """Console-script entry point (mim-study)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
