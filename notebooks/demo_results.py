# %% [markdown]
# # Demo results: training curves and frozen-feature accuracy, pretrained vs random init
# Percent-format notebook (open with Jupyter + jupytext, or run as a script):
# `python notebooks/demo_results.py --runs workdirs/demo workdirs/simmim_demo --out docs/images/demo_results.png`
# Left: the training loss of each run (from `metrics.jsonl`; MAE's and SimMIM's losses are different quantities,
# so each run gets its own axis scale). Right: linear-probe and kNN top-1 of each pretrained encoder next to the
# same encoder at its random init (from `evals/*.json`).

# %%
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from mim_jax.study.collect import metrics_rows  # noqa: E402

EVALS = (("linear_probe", "linear probe"), ("knn", "kNN"))


def read_curve(run_dir: str) -> tuple[list[int], list[float]]:
    """(steps, train losses) of a run's metrics.jsonl (train rows only)."""
    rows = [r for r in metrics_rows(run_dir) if "loss" in r]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def read_top1(run_dir: str, name: str) -> tuple[float, float]:
    """(pretrained, random init) top-1 of evaluator `name`, as percentages."""
    def top1(suffix: str) -> float:
        with open(os.path.join(run_dir, "evals", f"{name}{suffix}.json")) as f:
            return 100 * json.load(f)["top1"]
    return top1(""), top1("_random_init")


def run_label(run_dir: str) -> str:
    """'mae (demo)' from the run's config.json: its objective and its directory name."""
    with open(os.path.join(run_dir, "config.json")) as f:
        objective = json.load(f)["objective"]
    return f"{objective} ({os.path.basename(os.path.normpath(run_dir))})"


def plot(runs: list[str], out: str) -> None:
    """Write the two-panel figure for `runs` to `out` (PNG or SVG by extension)."""
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4))
    for i, run in enumerate(runs):
        steps, losses = read_curve(run)
        axis = curves if i == 0 else curves.twinx()
        axis.plot(steps, losses, color=f"C{i}", label=run_label(run))
        axis.set_ylabel(f"{run_label(run)} train loss", color=f"C{i}")
    curves.set_xlabel("step")
    curves.set_title("training loss")
    width = 0.8 / (2 * len(runs))
    for i, run in enumerate(runs):
        for j, (name, _) in enumerate(EVALS):
            pretrained, random_init = read_top1(run, name)
            x = j + (2 * i - len(runs)) * width + width / 2
            objective = run_label(run).split(" (")[0]
            bars.bar(x, pretrained, width, color=f"C{i}", label=f"{objective} pretrained" if j == 0 else None)
            bars.bar(x + width, random_init, width, color=f"C{i}", alpha=0.35,
                     label=f"{objective} random init" if j == 0 else None)
            bars.text(x, pretrained + 0.5, f"{pretrained:.1f}", ha="center", fontsize=8)
            bars.text(x + width, random_init + 0.5, f"{random_init:.1f}", ha="center", fontsize=8)
    bars.set_xticks(range(len(EVALS)), [label for _, label in EVALS])
    bars.set_ylabel("val top-1 (%)")
    bars.set_title("frozen features, 2,500 val images, 10 classes")
    bars.set_ylim(0, bars.get_ylim()[1] * 1.3)  # room for the legend above the bars
    bars.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", nargs="+", required=True, help="pretraining workdirs with evals/")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    plot(args.runs, args.out)
