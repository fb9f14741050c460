"""Quiet start-up (mim_jax/console.py): a CLI's console shows our lines, not TensorFlow's / absl's load-time noise."""
import os
import re
import subprocess
import sys

import pytest

from conftest import tiny_pretrain_config, write_config_file
from mim_jax import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lines TensorFlow (loaded by clu's TensorBoard writer) printed at start-up before mim_jax/console.py.
NOISE = ("oneDNN custom operations are on", "absl::InitializeLog()", "cpu_feature_guard", "This TensorFlow binary")
# An absl-formatted INFO line ("I1201 08:27:06.796480 140071678454656 file.py:112] ..."): library-style noise.
ABSL_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


def clean_env() -> dict:
    """This process's environment without the quieting variables (importing an entry module here sets them)."""
    env = dict(os.environ)
    for name in console.QUIET_ENV:
        env.pop(name, None)
    return env


@pytest.mark.slow
@pytest.mark.multiprocess
def test_pretrain_console_shows_our_lines_only(tiny_dataset, tmp_path):
    config = tiny_pretrain_config(tiny_dataset, total_steps=1)
    for name in ("linear_probe", "knn", "fewshot"):
        config.evals[name].at_end = False
    config.evals.val_loss.every_steps = 0
    cmd = [sys.executable, "-m", "mim_jax.pretrain", f"--config={write_config_file(str(tmp_path / 'c.py'), config)}",
           f"--workdir={tmp_path / 'wd'}"]
    for steps, ours in ((1, "Starting from scratch"), (2, "Resuming from checkpoint step 1")):  # fresh, then resumed
        proc = subprocess.run(cmd + [f"--config.total_steps={steps}"], cwd=REPO, env=clean_env(), capture_output=True,
                              text=True, timeout=600)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert ours in out and f"step {steps}/{steps} | loss" in out, out
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "wd"))  # TensorFlow did load
        for line in NOISE:
            assert line not in out, out
        assert not ABSL_INFO.search(out), out  # e.g. 'I1201 08:27:06.79 ... checkpoints.py:112] restored checkpoint'


@pytest.mark.multiprocess
def test_our_errors_still_print(tmp_path):
    cmd = [sys.executable, "-m", "mim_jax.pretrain", "--config=configs/demo.py", f"--workdir={tmp_path / 'wd'}",
           "--config.model.mask_ratio=0.6"]
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "use --config.mae.mask_ratio" in proc.stderr.strip().splitlines()[-1]
    for line in NOISE:
        assert line not in proc.stdout + proc.stderr


@pytest.mark.multiprocess
def test_a_users_own_setting_wins():
    env = dict(clean_env(), TF_CPP_MIN_LOG_LEVEL="0")
    code = "import os, mim_jax.console; print(os.environ['TF_CPP_MIN_LOG_LEVEL'], os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["0", "0"], proc.stderr
