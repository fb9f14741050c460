"""notebooks/demo_results.py reads run directories (metrics.jsonl, evals/, config.json) and writes the figure."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_notebook():
    spec = importlib.util.spec_from_file_location("demo_results", os.path.join(REPO, "notebooks", "demo_results.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(path, objective, losses, top1):
    os.makedirs(os.path.join(path, "evals"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"objective": objective}, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for step, loss in enumerate(losses, 1):
            f.write(json.dumps({"step": step, "loss": loss}) + "\n")
        f.write(json.dumps({"step": len(losses), "val_loss": 0.5}) + "\n")  # an eval row: not a train row
    for name, (pretrained, random_init) in top1.items():
        for suffix, value in (("", pretrained), ("_random_init", random_init)):
            with open(os.path.join(path, "evals", f"{name}{suffix}.json"), "w") as f:
                json.dump({"top1": value}, f)


def test_reads_runs_and_writes_the_figure(tmp_path):
    nb = load_notebook()
    mae, simmim = str(tmp_path / "demo"), str(tmp_path / "simmim_demo")
    fake_run(mae, "mae", [0.9, 0.8, 0.7], {"linear_probe": (0.259, 0.193), "knn": (0.317, 0.258)})
    fake_run(simmim, "simmim", [0.6, 0.5], {"linear_probe": (0.30, 0.19), "knn": (0.33, 0.25)})
    assert nb.read_curve(mae) == ([1, 2, 3], [0.9, 0.8, 0.7])
    assert nb.read_top1(mae, "knn") == pytest.approx((31.7, 25.8))
    assert nb.run_label(simmim) == "simmim (simmim_demo)"
    out = str(tmp_path / "fig" / "demo.png")
    nb.plot([mae, simmim], out)
    image = np.asarray(Image.open(out))
    assert image.shape[:2] == (440, 1210) and image.std() > 10  # 11 x 4 inches at 110 dpi, not blank
