"""Run a study: expand its grid, order the cells, run them locally one after another or submit them.

Layout: ROOT/study.json (which study and cells the root holds), ROOT/<cell>/ a pretraining workdir plus
cell.json (the cell: its axis values, config spec, overrides, command), study_state.json (running / done /
failed) and train.log. `local` runs `python -m mim_jax.pretrain` for each cell in turn: a finished cell is skipped,
a killed one resumes from its own checkpoint. `slurm` and `tpu` hand each cell to launch/slurm.py or
launch/tpu_pod.py (their dry run prints the job).
"""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import IO

import mim_jax
from mim_jax import workdir as run_dirs
from mim_jax.config.recipes import load_module
from mim_jax.errors import ConfigError
from mim_jax.study import branching, estimate, grid
from mim_jax.study.grid import Cell, Study
from mim_jax.train.run_log import METRICS_FILE

STUDY_FILE = "study.json"
CELL_FILE = "cell.json"
STATE_FILE = "study_state.json"
LOG_FILE = "train.log"
LAUNCHERS = ("local", "slurm", "tpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(mim_jax.__file__)))


@dataclasses.dataclass
class Plan:
    """A study resolved for one root: the selected cells in run order, their configs, overrides and branches."""
    study: Study
    spec: str
    root: str
    cells: list[Cell]
    all_cells: list[Cell]
    configs: dict
    overrides: dict
    branches: dict

    def workdir(self, name: str) -> str:
        """ROOT/<cell>."""
        return run_dirs.join(self.root, name)


def load_study(spec: str) -> Study:
    """The Study of 'configs/studies/<name>.py[:arg]' (its get_study(arg))."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        raise ConfigError(f"--config={spec}: no such study file {path!r} (e.g. configs/studies/demo.py)")
    module = load_module(path)
    if not hasattr(module, "get_study"):
        raise ConfigError(f"--config={spec}: {path} defines no get_study(arg); is it a study file?")
    try:
        return module.get_study(arg)
    except ValueError as err:
        raise ConfigError(f"--config={spec}: {err}") from None


def parse_sets(sets: list[str]) -> dict:
    """['teacher.weights=/w/clip.pt', 'optim.base_lr=1e-4'] -> {field: python value (literal if it parses)}."""
    out = {}
    for item in sets or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set={item!r} must look like field=value, e.g. --set=data.path=/data/in1k")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out


def check_root(root: str, study: Study, spec: str, cells: list[Cell], write: bool = True) -> None:
    """Refuse a root that holds another study's cells; record this study there (ROOT/study.json) when `write`."""
    path = run_dirs.join(root, STUDY_FILE)
    if run_dirs.exists(path):
        held = json.loads(run_dirs.read_text(path))
        if held.get("study") != study.name:
            raise ConfigError(f"--root={root} holds the cells of study {held.get('study')!r} ({path}); use another "
                              f"--root for study {study.name!r}")
        names = list(dict.fromkeys(held.get("cells", []) + [c.name for c in cells]))
    else:
        foreign = [d for d in (os.listdir(root) if os.path.isdir(root) else [])
                   if os.path.exists(os.path.join(root, d, CELL_FILE))]
        if foreign:
            raise ConfigError(f"--root={root} holds study cells ({foreign[0]}, ...) but no {STUDY_FILE}; use another "
                              f"--root")
        names = [c.name for c in cells]
    if write:
        run_dirs.write_text(path, json.dumps({"study": study.name, "spec": spec, "cells": names}, indent=2))


def run_order(cells: list[Cell], all_cells: list[Cell], branches: dict) -> list[Cell]:
    """Cells with what they start from (referenced cells, branch sources) before them; otherwise grid order."""
    by_name = {c.name: c for c in cells}
    ordered, seen = [], set()

    def visit(cell: Cell) -> None:
        if cell.name in seen:
            return
        seen.add(cell.name)
        before = grid.dependencies(cell, all_cells)
        if cell.name in branches:
            before.append(branches[cell.name].source)
        for name in before:
            if name in by_name:
                visit(by_name[name])
        ordered.append(cell)
    for cell in cells:
        visit(cell)
    return ordered


def prepare(spec: str, root: str, pattern: str = "", sets: list[str] | None = None) -> Plan:
    """Expand, select and check the study's cells, resolve their configs and plan the shared first stages."""
    study = load_study(spec)
    all_cells = grid.expand(study)
    cells = grid.select_cells(all_cells, pattern, study.name)
    grid.check_available(cells, study.name)
    root = run_dirs.resolve(root)
    extra = parse_sets(sets or [])
    overrides = {c.name: {**grid.resolve_refs(c, all_cells, root), **extra} for c in cells}
    configs = {c.name: grid.resolve_config(c, overrides[c.name]) for c in cells}
    branches = branching.plan_branches(cells, configs)
    for branch in branches.values():
        overrides[branch.source]["ckpt.keep_steps"] = branching.keep_steps(branch.source, branches)
        overrides[branch.cell]["ckpt.resume_from"] = run_dirs.join(root, branch.source, "checkpoints",
                                                                   str(branch.step))
    for name in {b.source for b in branches.values()}:
        configs[name].ckpt.keep_steps = overrides[name]["ckpt.keep_steps"]
    return Plan(study, spec, root, run_order(cells, all_cells, branches), all_cells, configs, overrides, branches)


def read_state(workdir: str) -> dict:
    """The cell's study_state.json ({} before its first run)."""
    path = run_dirs.join(workdir, STATE_FILE)
    return json.loads(run_dirs.read_text(path)) if run_dirs.exists(path) else {}


def write_state(workdir: str, **state) -> None:
    """Replace the cell's study_state.json."""
    run_dirs.write_text(run_dirs.join(workdir, STATE_FILE), json.dumps(state, indent=2))


def write_cell(plan: Plan, cell: Cell, args: list[str]) -> None:
    """ROOT/<cell>/cell.json: study, axis labels, config spec, overrides and the pretrain command."""
    record = {"study": plan.study.name, "cell": cell.name, "axes": {a: v.label for a, v in cell.values.items()},
              "x": {a: v.x for a, v in cell.values.items()}, "spec": cell.spec,
              "overrides": {k: grid.format_flag(v) for k, v in plan.overrides[cell.name].items()},
              "branch": dataclasses.asdict(plan.branches[cell.name]) if cell.name in plan.branches else None,
              "command": ["python", "-m", "mim_jax.pretrain", *args]}
    run_dirs.write_text(run_dirs.join(plan.workdir(cell.name), CELL_FILE), json.dumps(record, indent=2))


def seed_branch_metrics(source_dir: str, workdir: str, step: int) -> None:
    """A branch's metrics.jsonl starts with its source's rows up to the branch step (the shared first stage)."""
    target = run_dirs.join(workdir, METRICS_FILE)
    source = run_dirs.join(source_dir, METRICS_FILE)
    if run_dirs.exists(target) or not run_dirs.exists(source):
        return
    rows = [line for line in run_dirs.read_text(source).splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    run_dirs.write_text(target, "".join(line + "\n" for line in rows))


def stream(argv: list[str], log_path: str, out: IO) -> int:
    """Run `argv`, its output appended to `log_path` and echoed to `out`; returns its exit status."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH", "")]))}
    with open(log_path, "a") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            log.write(line)
            log.flush()
            out.write(line)
            out.flush()
        return proc.wait()


def run_local_cell(plan: Plan, cell: Cell, out: IO) -> int:
    """Run one cell to the end (with its evaluations) unless it is done; returns the exit status."""
    workdir = plan.workdir(cell.name)
    if read_state(workdir).get("state") == "done":
        print(f"[study] {cell.name}: done, skipped", file=out, flush=True)
        return 0
    run_dirs.make_dirs(workdir)
    branch = plan.branches.get(cell.name)
    if branch:
        start = plan.overrides[cell.name]["ckpt.resume_from"]
        if not run_dirs.exists(start):
            raise ConfigError(f"cell {cell.name} branches from {branch.source} at step {branch.step}, but {start} "
                              f"is not there; run {branch.source} first (select it with --cells)")
        seed_branch_metrics(plan.workdir(branch.source), workdir, branch.step)
        print(f"[study] {cell.name}: branches from {branch.source} at step {branch.step} (its decay point); "
              f"trains steps {branch.step + 1}..{plan.configs[cell.name].total_steps}", file=out, flush=True)
    args = grid.pretrain_args(cell, workdir, plan.overrides[cell.name])
    write_cell(plan, cell, args)
    write_state(workdir, state="running", pid=os.getpid(), started=time.time())
    print(f"[study] {cell.name}: python -m mim_jax.pretrain {' '.join(args)}", file=out, flush=True)
    start_time = time.time()
    status = stream([sys.executable, "-m", "mim_jax.pretrain", *args], run_dirs.join(workdir, LOG_FILE), out)
    seconds = round(time.time() - start_time, 1)
    write_state(workdir, state="done" if status == 0 else "failed", exit_status=status, seconds=seconds,
                finished=time.time())
    print(f"[study] {cell.name}: {'done' if status == 0 else f'failed (exit {status})'} in {seconds}s",
          file=out, flush=True)
    return status


def launcher_argv(plan: Plan, cell: Cell, launcher: str, options: list[str], dry_run: bool,
                  overrides: dict) -> list[str]:
    """The argument list of launch/slurm.py or launch/tpu_pod.py for one cell."""
    config = plan.configs[cell.name]
    if launcher == "slurm":
        nodes, per_node = estimate.slurm_shape(estimate.chip_count(config))
        own = [f"--nodes={nodes}", f"--gpus_per_node={per_node}", f"--job_name={plan.study.name}-{cell.name}"]
    else:
        name = f"{plan.study.name}-{cell.name}".lower().replace("_", "-").replace(".", "p")
        own = [f"--name={name[:63].rstrip('-')}"]
    return [*own, *options, *(["--dry_run"] if dry_run else []), "--",
            *grid.pretrain_args(cell, plan.workdir(cell.name), overrides)]


def submit_cell(plan: Plan, cell: Cell, launcher: str, options: list[str], dry_run: bool, out: IO) -> int:
    """Hand one cell to its cluster launcher (a dry run prints the job); returns the launcher's status."""
    overrides = dict(plan.overrides[cell.name])
    branch = plan.branches.get(cell.name)
    if branch and not run_dirs.exists(overrides["ckpt.resume_from"]):
        if not dry_run:
            print(f"[study] {cell.name}: waits for {branch.source} (branches at step {branch.step}); re-run this "
                  f"command once it has finished", file=out, flush=True)
            return 0
        print(f"# {cell.name} branches from {branch.source} at step {branch.step}: submitted once that step exists "
              f"(checked here without --config.ckpt.resume_from)", file=out, flush=True)
        overrides.pop("ckpt.resume_from")
    pending = [name for name in grid.dependencies(cell, plan.all_cells) if not has_final_checkpoint(plan, name)]
    if pending and not dry_run:
        print(f"[study] {cell.name}: waits for {', '.join(pending)} (it starts from their runs); re-run this command "
              f"once they have finished", file=out, flush=True)
        return 0
    module = load_module(os.path.join(REPO, "launch", "slurm.py" if launcher == "slurm" else "tpu_pod.py"))
    argv = launcher_argv(plan, cell, launcher, options, dry_run, overrides)
    print(f"[study] {cell.name}:", file=out, flush=True)
    return module.main(argv)


def has_final_checkpoint(plan: Plan, name: str) -> bool:
    """Whether cell `name` has saved its last step (a cluster job's run is done; a local one writes its state)."""
    config = plan.configs.get(name) or grid.resolve_config(next(c for c in plan.all_cells if c.name == name))
    return run_dirs.exists(run_dirs.join(plan.workdir(name), "checkpoints", str(config.total_steps)))


def print_job_plan(plan: Plan, launcher: str, out: IO) -> None:
    """Cells x slices and chip-hours from our FLOPs at the study's assumed MFU, and the compute branching saves."""
    mfu = plan.study.assumed_mfu
    print(f"\n[study] job plan of {plan.study.name}: {len(plan.cells)} cells, chip-hours = our model FLOPs / "
          f"(bf16 peak x assumed MFU {mfu:.0%})", file=out)
    print(f"{'cell':<34} {'slice':<12} {'chips':>5} {'chip':<12} {'steps':>9} {'PFLOPs':>12} {'chip-hours':>11}",
          file=out)
    total_hours = saved_hours = 0.0
    for cell in plan.cells:
        config = plan.configs[cell.name]
        branch = plan.branches.get(cell.name)
        e = estimate.estimate(config, launcher, mfu, branch.step if branch else 0)
        total_hours += e.chip_hours
        if branch:
            saved_hours += estimate.estimate(config, launcher, mfu).chip_hours - e.chip_hours
        note = f"  (from {branch.source} @ {branch.step})" if branch else ""
        print(f"{cell.name:<34} {config.plan.topology or '-':<12} {e.chips:>5} {e.chip:<12} {e.steps:>9} "
              f"{e.flops / 1e15:>12.4g} {e.chip_hours:>11.1f}{note}", file=out)
    print(f"total {total_hours:,.1f} chip-hours at {mfu:.0%} MFU; shared first stages save {saved_hours:,.1f} "
          f"chip-hours ({len(plan.branches)} branched cells)", file=out, flush=True)


def run(plan: Plan, launcher: str = "local", dry_run: bool = False, options: list[str] | None = None,
        out: IO | None = None) -> int:
    """Run (local) or submit (slurm / tpu) the plan's cells; a dry run prints the commands; returns the status."""
    out = out or sys.stdout
    if launcher not in LAUNCHERS:
        raise ConfigError(f"--launcher={launcher!r}: use one of {LAUNCHERS}")
    if not dry_run or launcher == "local":
        run_dirs.make_dirs(plan.root)
    check_root(plan.root, plan.study, plan.spec, plan.cells, write=not dry_run)
    print(f"[study] {plan.study.name}: {len(plan.cells)} cells under {plan.root} ({launcher}"
          f"{', dry run' if dry_run else ''})", file=out, flush=True)
    status = 0
    for cell in plan.cells:
        if launcher == "local" and dry_run:
            args = grid.pretrain_args(cell, plan.workdir(cell.name), plan.overrides[cell.name])
            print(f"{cell.name}: python -m mim_jax.pretrain {' '.join(args)}", file=out)
            continue
        if launcher == "local":
            status = run_local_cell(plan, cell, out)
        else:
            status = submit_cell(plan, cell, launcher, options or [], dry_run, out)
        if status:
            return status
    if dry_run or launcher != "local":
        print_job_plan(plan, launcher, out)
    return status
