# %% [markdown]
# # Training curves of one pretraining run
# Percent-format notebook (open with Jupyter + jupytext, or run as a script):
# `python notebooks/training_curves.py --workdir=workdirs/demo --out=workdirs/demo/training_curves.png`
# Panels from the run's `metrics.jsonl`: train loss, learning rate, and the periodic evaluations it logged
# (validation losses, probe / kNN top-1), each against the step.

# %%
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

TRAIN_KEYS = ("loss", "lr")


def read_metrics(run_dir: str) -> tuple[dict, dict]:
    """({'loss': [(step, v)], 'lr': [...]}, {eval key: [(step, v)]}) from RUN_DIR/metrics.jsonl."""
    train, evals = {k: [] for k in TRAIN_KEYS}, {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed run
            if "loss" in row:
                for k in TRAIN_KEYS:
                    if k in row:
                        train[k].append((row["step"], row[k]))
            else:
                for k, v in row.items():
                    if k != "step" and isinstance(v, (int, float)):
                        evals.setdefault(k, []).append((row["step"], v))
    return train, evals


def plot_run(run_dir: str, out: str) -> int:
    """Write the figure; returns the number of panels."""
    train, evals = read_metrics(run_dir)
    panels = [("train loss", {"loss": train["loss"]}), ("learning rate", {"lr": train["lr"]})]
    if evals:
        panels.append(("evaluations", evals))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6))
    for ax, (title, series) in zip(axes, panels):
        for name, points in series.items():
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="." if len(points) < 30 else None, label=name)
        ax.set(title=title, xlabel="step")
        if len(series) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return len(panels)


# %% tags=["parameters"]
# Parameters: flags when run as a script; in a notebook kernel the environment (MIM_RUN_DIR, MIM_OUT) or defaults.
parser = argparse.ArgumentParser()
parser.add_argument("--workdir", default=os.environ.get("MIM_RUN_DIR", "workdirs/demo"))
parser.add_argument("--out", default=os.environ.get("MIM_OUT", "workdirs/demo/training_curves.png"))
args, _ = parser.parse_known_args()  # a kernel's own arguments (-f connection file) are ignored

# %%
print(f"{plot_run(args.workdir, args.out)} panels -> {args.out}")
