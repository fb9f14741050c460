# %% [markdown]
# # A study's curves
# Percent-format notebook (open with Jupyter + jupytext, or run as a script):
# `python notebooks/study_curves.py --root=workdirs/study_demo --out=docs/images/study_demo.png`
# Collects the study under ROOT (`python -m mim_jax.study collect` does the same): ROOT/study.csv, ROOT/study.md and
# ROOT/plots/*, then shows the table and puts the figures that apply side by side in one image: validation loss
# against relative compute per model x data size (Xie et al.), the headline metric against data size (Lu et al.),
# and the training curves of every cell.

# %%
import argparse
import os

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from mim_jax.study import collect, plots  # noqa: E402

ORDER = ("val_loss_vs_compute", "metric_vs_data", "init_comparison", "training_curves")


def study_figure(root: str, out: str, metric: str = "") -> dict:
    """Collect ROOT, draw its plots and combine them into `out`; returns {figure: number of series}."""
    study = collect.read_study(root)
    rows = collect.collect_rows(root)
    collect.write_csv(rows, os.path.join(root, "study.csv"))
    collect.write_markdown(rows, os.path.join(root, "study.md"), f"Study {study['study']}")
    drawn = plots.write_plots(root, rows, study["study"], metric)
    names = [n for n in ORDER if n in drawn]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.imshow(mpimg.imread(os.path.join(root, "plots", f"{name}.png")))
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)
    print(open(os.path.join(root, "study.md")).read())
    return drawn


# %% tags=["parameters"]
# Parameters: flags when run as a script; in a notebook kernel the environment (MIM_STUDY_ROOT, MIM_OUT) or defaults.
parser = argparse.ArgumentParser()
parser.add_argument("--root", default=os.environ.get("MIM_STUDY_ROOT", "workdirs/study_demo"))
parser.add_argument("--out", default=os.environ.get("MIM_OUT", "workdirs/study_demo/study_curves.png"))
parser.add_argument("--metric", default=os.environ.get("MIM_METRIC", "knn/top1"))
args, _ = parser.parse_known_args()  # a kernel's own arguments (-f connection file) are ignored

# %%
print(f"{study_figure(args.root, args.out, args.metric)} -> {args.out}")
