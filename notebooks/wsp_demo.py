# %% [markdown]
# # MAE -> WSP demo: the three rows (MAE, WSP from MAE, WSP from scratch) and both WSP loss curves
# Percent-format notebook (open with Jupyter + jupytext, or run as a script):
# `python notebooks/wsp_demo.py --mae workdirs/demo --from_mae workdirs/wsp_from_mae --scratch workdirs/wsp_scratch
#  --out docs/images/wsp_demo.png`
# Prints a markdown table of probe / kNN / 25-shot top-1 with one standard error each, and plots the two WSP
# training losses (same loss, same steps) on one axis. Standard errors: sqrt(p (1 - p) / n_val) for the probe and
# kNN; for few-shot, the spread of the seed means and the val sampling together,
# sqrt(var_seeds / S + p (1 - p) / (S n_val)) over S seeds.

# %%
import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402

from mim_jax.study.collect import metrics_rows  # noqa: E402

SHOTS = 25


def read_eval(run_dir: str, name: str) -> dict:
    """evals/<name>.json of a run."""
    with open(os.path.join(run_dir, "evals", f"{name}.json")) as f:
        return json.load(f)


def top1_with_se(run_dir: str, name: str) -> tuple[float, float]:
    """(top-1, one standard error) of evaluator `name` of a run, as fractions (see the module notes)."""
    r = read_eval(run_dir, name)
    if name == "fewshot":
        p, seeds = r[f"{SHOTS}shot_top1"], r[f"{SHOTS}shot_top1_per_seed"]
        s = len(seeds)
        var = sum((x - p) ** 2 for x in seeds) / max(s - 1, 1)
        return p, math.sqrt(var / s + p * (1 - p) / (s * r["num_val"]))
    p = r["top1"]
    return p, math.sqrt(p * (1 - p) / r["num_val"])


def table(rows: dict[str, str]) -> str:
    """Markdown table: one row per (label, run dir), probe / kNN / few-shot top-1 as 'xx.x% +- y.y'."""
    lines = ["| run | linear probe top-1 | kNN top-1 | 25-shot top-1 |", "|---|---|---|---|"]
    for label, run in rows.items():
        cells = [f"{100 * p:.1f}% ± {100 * se:.1f}" for p, se in
                 (top1_with_se(run, n) for n in ("linear_probe", "knn", "fewshot"))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_curve(run_dir: str) -> tuple[list[int], list[float]]:
    """(steps, train losses) of a run's metrics.jsonl (train rows only)."""
    rows = [r for r in metrics_rows(run_dir) if "loss" in r]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def plot(curves: dict[str, str], out: str) -> None:
    """Both WSP training losses on one axis -> `out` (PNG)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, run in curves.items():
        ax.plot(*read_curve(run), label=label)
    ax.set(xlabel="WSP step", ylabel="soft-target cross-entropy (train)", title="WSP on multi-label shapes")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


# %%
def main(argv=None) -> str:
    """Print the table and write the plot; returns the table."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mae", required=True, help="the MAE run (the quickstart)")
    p.add_argument("--from_mae", required=True, help="the WSP run initialized from --mae")
    p.add_argument("--scratch", required=True, help="the WSP run from random init, same steps")
    p.add_argument("--out", required=True, help="PNG of both WSP loss curves")
    a = p.parse_args(argv)
    text = table({"MAE (quickstart)": a.mae, "MAE -> WSP": a.from_mae, "WSP from scratch": a.scratch})
    plot({"MAE -> WSP": a.from_mae, "WSP from scratch": a.scratch}, a.out)
    print(text)
    return text


if __name__ == "__main__":
    main()
