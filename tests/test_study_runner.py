"""The study runner end to end on demo.py:tiny: killed mid-cell and re-run, branch == scratch bit for bit, collect;
the Lu et al. grid's SLURM dry run; one-line refusals of bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mim_jax.objectives import registry
from mim_jax.study import __main__ as study_cli
from mim_jax.study import collect
from mim_jax.train import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def study_env():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per cell: faster
    return {**env, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}


def study_cmd(root, cells):
    return [sys.executable, "-m", "mim_jax.study", "run", "--config=configs/studies/demo.py:tiny", f"--root={root}",
            f"--cells={cells}"]


def state(root, cell):
    path = os.path.join(root, cell, "study_state.json")
    return json.load(open(path)).get("state") if os.path.exists(path) else None


def final_params(workdir, step):
    with checkpoints.checkpoint_manager(workdir, max_to_keep=1, async_save=False) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.tree.map(np.asarray, restored["state"]["params"])


def losses(workdir):
    return {r["step"]: r["loss"] for r in collect.metrics_rows(workdir) if "loss" in r}


@pytest.fixture(scope="module")
def killed_and_rerun(tmp_path_factory):
    """Root A: the four w32 cells, SIGKILLed while w32_all_16 trains, then re-run to the end."""
    root = str(tmp_path_factory.mktemp("study") / "A")
    proc = subprocess.Popen(study_cmd(root, "^w32_"), cwd=REPO, env=study_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    target = os.path.join(root, "w32_all_16", "checkpoints", "5")
    deadline = time.time() + 900
    while not os.path.isdir(target) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = {c: state(root, c) for c in ("w32_64_16", "w32_64_8", "w32_all_16", "w32_all_8")}
    log_before = open(os.path.join(root, "w32_64_16", "train.log")).read()
    rerun = subprocess.run(study_cmd(root, "^w32_"), cwd=REPO, env=study_env(), capture_output=True, text=True,
                           timeout=900)
    return root, at_kill, log_before, rerun


@pytest.mark.slow
@pytest.mark.multiprocess
def test_killed_study_resumes_without_redoing_finished_cells(killed_and_rerun):
    root, at_kill, log_before, rerun = killed_and_rerun
    assert at_kill == {"w32_64_16": "done", "w32_64_8": "done", "w32_all_16": "running", "w32_all_8": None}
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "[study] w32_64_16: done, skipped" in rerun.stdout and "[study] w32_64_8: done, skipped" in rerun.stdout
    assert open(os.path.join(root, "w32_64_16", "train.log")).read() == log_before  # not run again
    resumed = open(os.path.join(root, "w32_all_16", "train.log")).read()
    assert "Resuming from checkpoint step 5" in resumed or "Resuming from checkpoint step 10" in resumed
    steps = [r["step"] for r in collect.metrics_rows(os.path.join(root, "w32_all_16")) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 16  # no duplicated rows after the resume
    assert all(state(root, c) == "done" for c in at_kill)
    status = collect.status_lines(root)
    assert len(status) == 5 and all(" done " in line for line in status[1:])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_branch_equals_scratch_bit_for_bit(killed_and_rerun, tmp_path):
    root = killed_and_rerun[0]
    cell = json.load(open(os.path.join(root, "w32_64_8", "cell.json")))
    assert cell["branch"] == {"cell": "w32_64_8", "source": "w32_64_16", "step": 7}
    assert "Resuming from checkpoint step 7 of ckpt.resume_from" in open(os.path.join(root, "w32_64_8",
                                                                                       "train.log")).read()
    scratch_root = str(tmp_path / "B")
    done = subprocess.run(study_cmd(scratch_root, "^w32_64_8$"), cwd=REPO, env=study_env(), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0 and "branches from" not in done.stdout
    assert "Starting from scratch" in open(os.path.join(scratch_root, "w32_64_8", "train.log")).read()
    branched, scratch = os.path.join(root, "w32_64_8"), os.path.join(scratch_root, "w32_64_8")
    a, b = final_params(branched, 8), final_params(scratch, 8)
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b] and len(flat_a) > 10
    for (path, x), (_, y) in zip(flat_a, flat_b):
        assert x.dtype == y.dtype and np.array_equal(x, y), path  # bit for bit
    assert losses(branched) == losses(scratch) and len(losses(scratch)) == 4  # steps 2, 4, 6, 8
    ev_a = json.load(open(os.path.join(branched, "evals", "objective_loss.json")))
    ev_b = json.load(open(os.path.join(scratch, "evals", "objective_loss.json")))
    assert ev_a["loss"] == ev_b["loss"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_collect_of_the_run_writes_csv_md_and_plots(killed_and_rerun, capsys):
    root = killed_and_rerun[0]
    assert study_cli.main(["collect", f"--root={root}"]) == 0
    header = open(os.path.join(root, "study.csv")).readline().strip().split(",")
    assert header[:4] == ["cell", "model", "data", "length"] and "relative_compute" in header
    rows = {r["cell"]: r for r in collect.collect_rows(root)}
    assert rows["w32_64_8"]["relative_compute"] == pytest.approx(1.0)
    assert rows["w32_all_16"]["relative_compute"] == pytest.approx(2.0)
    assert rows["w32_64_8"]["branched_from"] == "w32_64_16" and rows["w32_64_8"]["val_loss"] > 0
    out = capsys.readouterr().out
    assert "val_loss_vs_compute (2 series)" in out and "metric_vs_data (2 series)" in out
    assert "training_curves (4 series)" in out
    for name in ("val_loss_vs_compute", "metric_vs_data", "training_curves"):
        assert os.path.getsize(os.path.join(root, "plots", f"{name}.png")) > 1000


@pytest.mark.slow
def test_lu_slurm_dry_run_lists_30_cells_with_commands_and_chip_hours(tmp_path, capsys):
    assert study_cli.main(["run", "--config=configs/studies/lu2023.py", "--launcher=slurm",
                           f"--root={tmp_path / 'x'}", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert out.count("\nsbatch --job-name=lu2023-") == 30 and out.count("srun --kill-on-bad-exit=1") == 30
    plan = out.split("[study] job plan of lu2023: 30 cells")[1].splitlines()
    assert "assumed MFU 40%" in plan[0]
    rows = [line.split() for line in plan[2:32]]
    assert [r[0] for r in rows[:2]] == ["B16_0.5M_clip", "B16_0.5M_rgb"] and rows[-1][0] == "H16_100M_rgb"
    assert all(float(r[6]) > 0 for r in rows)  # chip-hours
    # B16_0.5M_rgb: our FLOPs / (H100 bf16 peak 989 TFLOP/s x 0.4) / 3600
    from mim_jax.config.cli import load_config_file
    from mim_jax.train.program import train_flops_per_step
    c = load_config_file("configs/pretrain.py:batch=4096,model=B/16")
    c.mae.decoder.depth = 4
    expected = train_flops_per_step(c) * (300 * 500_000 // 4096) / (989e12 * 0.4) / 3600
    assert float(rows[1][6]) == pytest.approx(expected, abs=0.06)
    assert not os.path.exists(tmp_path / "x")  # a dry run writes nothing


MISSING_STUDY = """
from mim_jax.study.grid import Axis, Study, Value

def get_study(arg=""):
    model = Axis("model", (Value("vit22b", needs={"model": "ViT-22B"}),))
    objective = Axis("objective", (Value("beit", needs={"objective": "beit"}), Value("mae")))
    return Study(name="missing", config="configs/demo.py", axes=(model, objective))
"""


def test_bad_inputs_fail_in_one_line_naming_them(tmp_path, capsys):
    def error(*argv):
        assert study_cli.main(list(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
        return err
    root = f"--root={tmp_path / 'r'}"
    assert "unknown value 'huge' of axis 'model'" in error("run", "--config=configs/studies/demo.py:model=huge",
                                                           root, "--dry_run")
    assert "--cells='^nothing' matches none of the 12 cells" in error(
        "run", "--config=configs/studies/demo.py", root, "--cells=^nothing", "--dry_run")
    missing = tmp_path / "missing.py"
    missing.write_text(MISSING_STUDY)
    assert ("cell vit22b_beit needs objective 'beit', which is not registered (registered: "
            f"{', '.join(sorted(registry.OBJECTIVES))})") in error("run", f"--config={missing}", root, "--dry_run")
    assert "cell vit22b_mae needs model 'ViT-22B', which is in no size table" in error(
        "run", f"--config={missing}", root, "--cells=_mae$", "--dry_run")
    os.makedirs(tmp_path / "r")
    (tmp_path / "r" / "study.json").write_text(json.dumps({"study": "lu2023", "cells": ["B16_0.5M_clip"]}))
    assert "holds the cells of study 'lu2023'" in error("run", "--config=configs/studies/demo.py:tiny", root)
    assert "no such study file" in error("run", "--config=configs/studies/nope.py", root)


def test_a_cell_that_starts_from_another_cells_run_waits_for_it(tmp_path, capsys):
    """MAWS's MAE -> WSP cell is not submitted before its MAE cell has saved its last step; a dry run prints it."""
    import io
    from mim_jax.study import runner
    plan = runner.prepare("configs/studies/maws2023.py", str(tmp_path / "m"), pattern="^B16_ma")
    maws = next(c for c in plan.cells if c.name == "B16_maws")
    out = io.StringIO()
    assert runner.submit_cell(plan, maws, "slurm", [], dry_run=False, out=out) == 0
    assert out.getvalue().strip() == ("[study] B16_maws: waits for B16_mae (it starts from their runs); re-run this "
                                      "command once they have finished")
    assert not runner.has_final_checkpoint(plan, "B16_mae")
    os.makedirs(os.path.join(plan.workdir("B16_mae"), "checkpoints", str(plan.configs["B16_mae"].total_steps)))
    assert runner.has_final_checkpoint(plan, "B16_mae")
    # The dry run of the whole grid lists all 15 jobs although no cell has run (init_from is not checked there).
    assert study_cli.main(["run", "--config=configs/studies/maws2023.py", "--launcher=slurm",
                           f"--root={tmp_path / 'x'}", "--dry_run"]) == 0
    assert capsys.readouterr().out.count("\nsbatch --job-name=maws2023-") == 15
