"""notebooks/wsp_demo.py: the three-row table with standard errors (vs the formulas) and the loss-curve figure."""
import importlib.util
import json
import math
import os

from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_notebook():
    spec = importlib.util.spec_from_file_location("wsp_demo", os.path.join(REPO, "notebooks", "wsp_demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(path, probe, knn, seeds, losses=(2.3, 2.0, 1.5)):
    os.makedirs(os.path.join(path, "evals"))
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for step, loss in enumerate(losses, 1):
            f.write(json.dumps({"step": step, "loss": loss}) + "\n")
        f.write(json.dumps({"step": 3, "knn/top1": 0.3}) + "\n")  # an eval row: not a train row
    for name, value in (("linear_probe", probe), ("knn", knn)):
        with open(os.path.join(path, "evals", f"{name}.json"), "w") as f:
            json.dump({"top1": value, "num_val": 2500}, f)
    with open(os.path.join(path, "evals", "fewshot.json"), "w") as f:
        json.dump({"25shot_top1": sum(seeds) / len(seeds), "25shot_top1_per_seed": seeds, "num_val": 2500}, f)


def test_table_standard_errors_and_figure(tmp_path, capsys):
    nb = load_notebook()
    runs = [str(tmp_path / n) for n in ("mae", "from_mae", "scratch")]
    fake_run(runs[0], 0.26, 0.316, [0.17, 0.16, 0.17])
    fake_run(runs[1], 0.40, 0.45, [0.30, 0.32, 0.34], losses=(2.3, 1.2, 0.9))
    fake_run(runs[2], 0.30, 0.35, [0.20, 0.22, 0.24])
    p, se = nb.top1_with_se(runs[1], "linear_probe")
    assert (p, se) == (0.40, math.sqrt(0.4 * 0.6 / 2500))
    p, se = nb.top1_with_se(runs[1], "fewshot")
    assert abs(p - 0.32) < 1e-12
    assert abs(se - math.sqrt(0.0004 / 3 + 0.32 * 0.68 / (3 * 2500))) < 1e-12  # seed variance 0.02^2
    out = str(tmp_path / "img" / "wsp.png")
    text = nb.main(["--mae", runs[0], "--from_mae", runs[1], "--scratch", runs[2], "--out", out])
    assert "| MAE -> WSP | 40.0% ± 1.0 | 45.0% ± 1.0 | 32.0% ± 1.3 |" in text
    assert text in capsys.readouterr().out
    assert nb.read_curve(runs[1]) == ([1, 2, 3], [2.3, 1.2, 0.9])
    assert Image.open(out).size[0] > 300
