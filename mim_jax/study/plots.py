"""A study's figures (matplotlib, Agg; PNG and SVG under ROOT/plots/), each drawn only when the grid has its axes.

* val_loss_vs_compute: validation loss against relative compute, one line per model x data size (Xie Fig. 1-2);
* metric_vs_data: a metric against dataset size, one line per model (x target / objective) (Lu Fig. 2);
* init_comparison: a metric per model for each init (MAE->WSP against WSP, MAWS Fig. 3-4);
* training_curves: train loss against step from every cell's metrics.jsonl.
Each function returns the number of series it drew (0: not drawn).
"""
from __future__ import annotations

import os
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text (searchable, editable)
import matplotlib.pyplot as plt  # noqa: E402

from mim_jax.study.collect import metrics_rows  # noqa: E402

FORMATS = ("png", "svg")
GROUP_AXES = ("target", "objective")
METRIC_ORDER = ("finetune_top1", "linear_probe_top1", "knn_top1", "fewshot_top1", "val_loss")


def save(fig, out_dir: str, name: str) -> list[str]:
    """Write `fig` as out_dir/name.{png,svg}; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{name}.{ext}") for ext in FORMATS]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def _series(rows: list[dict], key: Callable[[dict], str], x: str, y: str) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for r in rows:
        if r.get(x) is not None and r.get(y) is not None:
            out.setdefault(key(r), []).append((float(r[x]), float(r[y])))
    return {k: sorted(v) for k, v in out.items()}


def _draw(ax, series: dict[str, list[tuple]]) -> int:
    for label, points in series.items():
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=label)
    if series:
        ax.legend(fontsize=7)
    return len(series)


def _label(r: dict, axes: tuple) -> str:
    return " ".join(str(r[a]) for a in axes if r.get(a))


def val_loss_vs_compute(rows: list[dict], out_dir: str, title: str) -> int:
    """Validation loss against relative compute, a line per model x data (x target) over lengths (Xie et al.)."""
    if not any(r.get("length") for r in rows):
        return 0
    series = _series(rows, lambda r: _label(r, ("model", "data") + GROUP_AXES), "relative_compute", "val_loss")
    if not series:
        return 0
    fig, ax = plt.subplots(figsize=(6, 4))
    n = _draw(ax, series)
    ax.set(xscale="log", xlabel="relative compute (FLOPs / smallest model's shortest run)",
           ylabel="validation loss", title=f"{title}: validation loss vs compute")
    save(fig, out_dir, "val_loss_vs_compute")
    return n


def headline_metric(rows: list[dict], preferred: str = "") -> str | None:
    """The metric to plot: `preferred` ('linear_probe/top1' -> linear_probe_top1) if present, else the first found."""
    wanted = preferred.replace("/", "_")
    for metric in (wanted, *METRIC_ORDER):
        if metric and any(r.get(metric) is not None for r in rows):
            return metric
    return None


def metric_vs_data(rows: list[dict], out_dir: str, title: str, preferred: str = "") -> int:
    """A metric against dataset size (images), a line per model (x target / objective / length) (Lu et al.)."""
    metric = headline_metric(rows, preferred)
    if metric is None or not any(r.get("data_x") for r in rows):
        return 0
    series = _series(rows, lambda r: _label(r, ("model", "length") + GROUP_AXES), "data_x", metric)
    if not series:
        return 0
    fig, ax = plt.subplots(figsize=(6, 4))
    n = _draw(ax, series)
    ax.set(xscale="log", xlabel="pretraining images", ylabel=metric, title=f"{title}: {metric} vs data size")
    save(fig, out_dir, "metric_vs_data")
    return n


def init_comparison(rows: list[dict], out_dir: str, title: str, preferred: str = "") -> int:
    """A metric against model size (parameters, or FLOPs per step), a line per init (MAWS: MAE->WSP vs WSP)."""
    metric = headline_metric(rows, preferred)
    if metric is None or not any(r.get("init") for r in rows):
        return 0
    x = "model_x" if any(r.get("model_x") for r in rows) else "flops_per_step"
    series = _series(rows, lambda r: _label(r, ("init",) + GROUP_AXES), x, metric)
    if not series:
        return 0
    fig, ax = plt.subplots(figsize=(6, 4))
    n = _draw(ax, series)
    ax.set(xscale="log", xlabel="model parameters" if x == "model_x" else "FLOPs per step", ylabel=metric,
           title=f"{title}: {metric} by init")
    save(fig, out_dir, "init_comparison")
    return n


def training_curves(root: str, rows: list[dict], out_dir: str, title: str) -> int:
    """Train loss against step, a line per cell that has logged (metrics.jsonl)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    n = 0
    for r in rows:
        points = [(m["step"], m["loss"]) for m in metrics_rows(os.path.join(root, r["cell"])) if "loss" in m]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, label=r["cell"], linewidth=1)
            n += 1
    if not n:
        plt.close(fig)
        return 0
    ax.set(xlabel="step", ylabel="train loss", title=f"{title}: training curves")
    ax.legend(fontsize=6, ncol=2)
    save(fig, out_dir, "training_curves")
    return n


def write_plots(root: str, rows: list[dict], title: str, preferred: str = "") -> dict[str, int]:
    """Every figure that applies, under ROOT/plots/; {figure name: number of series} of those drawn."""
    out_dir = os.path.join(root, "plots")
    drawn = {"val_loss_vs_compute": val_loss_vs_compute(rows, out_dir, title),
             "metric_vs_data": metric_vs_data(rows, out_dir, title, preferred),
             "init_comparison": init_comparison(rows, out_dir, title, preferred),
             "training_curves": training_curves(root, rows, out_dir, title)}
    return {k: v for k, v in drawn.items() if v}
