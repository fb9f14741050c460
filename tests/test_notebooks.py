"""The notebooks (jupytext percent format) execute in a Jupyter kernel against a tiny study and write their images."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("reconstructions", "training_curves", "study_curves")

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """Two cells of demo.py:tiny (a 16-step MAE run and its 8-step branch), collected by the notebooks."""
    root = str(tmp_path_factory.mktemp("nb") / "study")
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    subprocess.run([sys.executable, "-m", "mim_jax.study", "run", "--config=configs/studies/demo.py:tiny",
                    f"--root={root}", "--cells=^w32_64_"], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=900)
    return root


def execute(name, env, tmp_path, monkeypatch):
    """Run notebooks/<name>.py as a notebook in a fresh kernel with `env` (its parameters); returns the notebook."""
    for key, value in {"PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", **env}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    notebook = jupytext.read(os.path.join(REPO, "notebooks", f"{name}.py"))
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": REPO}})
    client.execute()
    return notebook


def check_image(path, min_size):
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] >= min_size[0] and image.shape[1] >= min_size[1]
    assert image.std() > 5  # not a blank canvas
    return image


@pytest.mark.slow
@pytest.mark.multiprocess
def test_notebooks_execute_and_write_their_images(tiny_study, tmp_path, monkeypatch):
    run_dir = os.path.join(tiny_study, "w32_64_16")
    out = {n: str(tmp_path / f"{n}.png") for n in NOTEBOOKS}
    nb = execute("reconstructions", {"MIM_RUN_DIR": run_dir, "MIM_OUT": out["reconstructions"]}, tmp_path,
                 monkeypatch)
    # 3 rows (original, masked, reconstruction) of 8 images of 32 px, scaled 2x
    assert check_image(out["reconstructions"], (192, 512)).shape[:2] == (192, 512)
    assert "wrote" in "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    execute("training_curves", {"MIM_RUN_DIR": run_dir, "MIM_OUT": out["training_curves"]}, tmp_path, monkeypatch)
    check_image(out["training_curves"], (300, 900))  # 2 panels: loss, lr (no periodic evaluation in the tiny run)
    nb = execute("study_curves", {"MIM_STUDY_ROOT": tiny_study, "MIM_OUT": out["study_curves"]}, tmp_path,
                 monkeypatch)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "'val_loss_vs_compute': 1" in text and "'training_curves': 2" in text
    check_image(out["study_curves"], (400, 1500))
    assert os.path.exists(os.path.join(tiny_study, "study.csv"))
