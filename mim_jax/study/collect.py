"""Read a study root back: each cell's state, last step and loss (status), and its results table (collect).

`collect` writes ROOT/study.csv and ROOT/study.md, one row per cell: its axis labels, state, the final train loss,
the validation loss (the objective_loss evaluator, else the recon_loss one), probe / kNN / few-shot / fine-tune
top-1, our model FLOPs of the run, and the relative compute of Xie et al. (FLOPs over those of the smallest
model's shortest run).
"""
from __future__ import annotations

import csv
import io
import json
import os

from mim_jax import workdir as run_dirs
from mim_jax.config.run_config import read_run_config
from mim_jax.errors import ConfigError
from mim_jax.study.grid import AXES
from mim_jax.study.runner import CELL_FILE, STUDY_FILE, read_state
from mim_jax.train.program import train_flops_per_step
from mim_jax.train.run_log import METRICS_FILE

RESULT_COLUMNS = ("state", "steps", "final_train_loss", "val_loss", "linear_probe_top1", "knn_top1",
                  "fewshot_top1", "finetune_top1", "flops", "relative_compute", "branched_from", "wall_seconds")
# evals/<name>.json type -> the column of its headline number.
EVAL_COLUMNS = {"objective_loss": ("val_loss", "loss"), "linear_probe": ("linear_probe_top1", "top1"),
                "knn": ("knn_top1", "top1"), "finetune": ("finetune_top1", "top1")}


def read_study(root: str) -> dict:
    """ROOT/study.json: {'study', 'spec', 'cells'}; a ConfigError when ROOT holds no study."""
    path = run_dirs.join(root, STUDY_FILE)
    if not run_dirs.exists(path):
        raise ConfigError(f"--root={root} holds no study ({STUDY_FILE} missing); run `python -m mim_jax.study run "
                          f"--config=... --root={root}` first")
    return json.loads(run_dirs.read_text(path))


def metrics_rows(workdir: str) -> list[dict]:
    """The JSON rows of WORKDIR/metrics.jsonl (a line cut short by a kill is skipped)."""
    path = run_dirs.join(workdir, METRICS_FILE)
    if not run_dirs.exists(path):
        return []
    rows = []
    for line in run_dirs.read_text(path).splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def last_train_row(workdir: str) -> dict:
    """The last metrics row with a train loss ({} before the first log)."""
    rows = [r for r in metrics_rows(workdir) if "loss" in r]
    return rows[-1] if rows else {}


def alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, TypeError):
        return False
    return True


def cell_state(workdir: str) -> str:
    """done / running / failed / pending (never started, or stopped and resumable)."""
    state = read_state(workdir)
    if state.get("state") == "running":
        return "running" if alive(state.get("pid")) else "pending"
    return state.get("state", "pending")


def status_lines(root: str) -> list[str]:
    """One line per cell of the root's study: name, state, step, last train loss."""
    study = read_study(root)
    lines = [f"study {study['study']} ({study['spec']}) under {root}: {len(study['cells'])} cells"]
    for name in study["cells"]:
        workdir = run_dirs.join(root, name)
        row = last_train_row(workdir)
        step = f"step {row['step']}" if row else "step -"
        loss = f"loss {row['loss']:.4f}" if row else "loss -"
        lines.append(f"{name:<34} {cell_state(workdir):<8} {step:<12} {loss}")
    return lines


def eval_results(workdir: str) -> dict:
    """Headline numbers of WORKDIR/evals/*.json (not the random-init baselines) by column."""
    out: dict = {}
    evals = run_dirs.join(workdir, "evals")
    if not run_dirs.is_dir(evals):
        return out
    for name in sorted(os.listdir(evals)):
        if not name.endswith(".json") or name.endswith("_random_init.json"):
            continue
        result = json.loads(run_dirs.read_text(run_dirs.join(evals, name)))
        kind = result.get("type")
        if kind in EVAL_COLUMNS:
            column, key = EVAL_COLUMNS[kind]
            out[column] = result.get(key)
        elif kind == "recon_loss":
            out.setdefault("val_loss", result.get("loss"))
        elif kind == "fewshot":
            shots = sorted((int(k.split("shot")[0]), v) for k, v in result.items() if k.endswith("shot_top1"))
            out["fewshot_top1"] = shots[-1][1] if shots else None
    return out


def cell_row(root: str, name: str) -> dict:
    """The study.csv row of one cell (results empty until it has run)."""
    workdir = run_dirs.join(root, name)
    cell_path = run_dirs.join(workdir, CELL_FILE)
    cell = json.loads(run_dirs.read_text(cell_path)) if run_dirs.exists(cell_path) else {"axes": {}, "x": {}}
    row: dict = {"cell": name, **{a: cell["axes"].get(a, "") for a in AXES},
                 **{f"{a}_x": cell["x"].get(a) for a in AXES}}
    row.update(state=cell_state(workdir), branched_from=(cell.get("branch") or {}).get("source", ""))
    row.update(wall_seconds=read_state(workdir).get("seconds"))
    if run_dirs.exists(run_dirs.join(workdir, "config.json")):
        config = read_run_config(workdir)
        row.update(steps=config.total_steps, flops=train_flops_per_step(config) * config.total_steps)
        row["flops_per_step"] = train_flops_per_step(config)
    last = last_train_row(workdir)
    row["final_train_loss"] = last.get("loss") if last.get("step") == row.get("steps") else None
    row.update(eval_results(workdir))
    return row


def add_relative_compute(rows: list[dict]) -> None:
    """relative_compute = flops / flops of the smallest model's (least FLOPs per step) shortest run (Xie et al.)."""
    known = [r for r in rows if r.get("flops")]
    if not known:
        return
    smallest = min(r["flops_per_step"] for r in known)
    reference = min(r["flops"] for r in known if r["flops_per_step"] == smallest)
    for r in known:
        r["relative_compute"] = r["flops"] / reference


def collect_rows(root: str) -> list[dict]:
    """One row per cell of the root's study, in its order."""
    rows = [cell_row(root, name) for name in read_study(root)["cells"]]
    add_relative_compute(rows)
    return rows


def columns(rows: list[dict]) -> list[str]:
    """cell, the axes the study has (label and plot position), then RESULT_COLUMNS."""
    axes = [a for a in AXES if any(r.get(a) for r in rows)]
    return ["cell", *axes, *(f"{a}_x" for a in axes), *RESULT_COLUMNS]


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(rows: list[dict], path: str) -> list[str]:
    """ROOT/study.csv; returns its header."""
    header = columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    for r in rows:
        writer.writerow([_fmt(r.get(c)) for c in header])
    run_dirs.write_text(path, buf.getvalue())
    return header


MARKDOWN_COLUMNS = ("final_train_loss", "val_loss", "linear_probe_top1", "knn_top1", "fewshot_top1",
                    "finetune_top1", "relative_compute", "state")


def write_markdown(rows: list[dict], path: str, title: str) -> None:
    """ROOT/study.md: a table of the axes and the results that exist (fractions as percentages)."""
    axes = [a for a in AXES if any(r.get(a) for r in rows)]
    shown = [c for c in MARKDOWN_COLUMNS if any(r.get(c) is not None for r in rows)]
    lines = [f"# {title}", "", "| " + " | ".join(["cell", *axes, *shown]) + " |",
             "|" + "---|" * (1 + len(axes) + len(shown))]
    for r in rows:
        cells = [r["cell"], *(str(r.get(a, "")) for a in axes)]
        for c in shown:
            v = r.get(c)
            cells.append("" if v is None else f"{v:.1%}" if c.endswith("top1") else
                         f"{v:.3g}" if c == "relative_compute" else f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    run_dirs.write_text(path, "\n".join(lines) + "\n")
