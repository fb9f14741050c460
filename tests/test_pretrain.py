"""End to end: pretrain writes the workdir contract, resumes exactly, survives SIGKILL, rejects bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import tiny_pretrain_config, write_config_file
from mim_jax.train import loop as pretrain
from mim_jax.train import preemption

pytestmark = [pytest.mark.fake_devices, pytest.mark.slow]  # pretraining runs on the 8 fake CPU devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_metrics(workdir, train_only=True):
    """metrics.jsonl rows; by default only train-step rows (evaluation rows carry no 'loss')."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if "loss" in r] if train_only else rows


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    config = tiny_pretrain_config(tiny_dataset)
    config.evals.linear_probe.update(dict(at_end=True, random_init_baseline=True))
    config.evals.knn.update(dict(at_end=True, random_init_baseline=True, k=5))  # shares the probe's features
    config.evals.fewshot.update(dict(at_end=True, shots=(1, 3)))
    config.evals.val_loss.every_steps = 3
    pretrain.train(config, workdir)
    return workdir, config


def test_workdir_contract(finished_run):
    workdir, config = finished_run
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(isinstance(r["loss"], float) and r["loss"] > 0 for r in rows)
    assert rows[0]["lr"] == 0.0 and rows[2]["lr"] == pytest.approx(1e-3 * 16 / 256, rel=1e-5)
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["model"]["width"] == 32 and saved["data"]["global_batch_size"] == 16
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
    for name in ("linear_probe", "linear_probe_random_init", "knn", "knn_random_init"):
        result = json.load(open(os.path.join(workdir, "evals", f"{name}.json")))
        assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
        assert result["num_val"] == 40
    fewshot = json.load(open(os.path.join(workdir, "evals", "fewshot.json")))
    assert len(fewshot["3shot_top1_per_seed"]) == 3 and not os.path.exists(os.path.join(workdir, "evals",
                                                                                        "fewshot_random_init.json"))
    # The validation loss runs every 3 steps: rows without 'loss' in metrics.jsonl, the last one in evals/.
    val_rows = [r for r in read_metrics(workdir, train_only=False) if "loss" not in r]
    assert [(r["step"], sorted(r)) for r in val_rows] == [(3, ["step", "val_loss"]), (6, ["step", "val_loss"])]
    val_loss = json.load(open(os.path.join(workdir, "evals", "val_loss.json")))
    assert val_loss["step"] == 6 and val_loss["loss"] == val_rows[-1]["val_loss"] and val_loss["num_examples"] == 40


def test_resume_from_checkpoint_reproduces_losses(finished_run, tmp_path):
    workdir, config = finished_run
    resumed = str(tmp_path / "resumed")
    shutil.copytree(workdir, resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "6"))  # as if killed between steps 3 and 6
    shutil.rmtree(os.path.join(resumed, "evals"))
    for name in ("linear_probe", "knn", "fewshot"):
        config.evals[name].at_end = False
    pretrain.train(config, resumed)
    rows = read_metrics(resumed, train_only=False)
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]  # step 3's row kept, step 6 re-evaluated
    assert [r["loss"] for r in read_metrics(resumed)] == [r["loss"] for r in read_metrics(workdir)]


def cli(workdir, *overrides, config="configs/demo.py"):
    return [sys.executable, "-m", "mim_jax.pretrain", f"--config={config}", f"--workdir={workdir}", *overrides]


def tiny_overrides(dataset_dir, total_steps):
    return [f"--config.total_steps={total_steps}", "--config.model.depth=1", "--config.model.width=32",
            "--config.model.heads=2", "--config.model.mlp_dim=64", "--config.model.patch_size=8",
            "--config.model.image_size=32", "--config.mae.decoder.width=16", "--config.mae.decoder.depth=1",
            "--config.mae.decoder.heads=2", "--config.data.source=arrayrecord",
            f"--config.data.path={dataset_dir}", "--config.data.global_batch_size=16", "--config.ckpt.every_steps=5",
            "--config.log.every_steps=1", "--config.evals.linear_probe.at_end=false"]


KILL_TEST_STEPS = 40


def wait_for(condition, proc, what, timeout=240, poll=0.002):
    """Poll `condition()` until true (returns its value); fails if `proc` exits first or after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    raise AssertionError(f"{what} did not happen (exit code {proc.returncode})")


def last_logged_step(workdir):
    try:
        return read_metrics(workdir)[-1]["step"]
    except (FileNotFoundError, IndexError, json.JSONDecodeError):
        return 0


def tmp_saves(ckpt_dir):
    return [n for n in os.listdir(ckpt_dir) if "orbax-checkpoint-tmp" in n] if os.path.isdir(ckpt_dir) else []


@pytest.fixture(scope="module")
def kill_test_config(tiny_dataset, tmp_path_factory):
    """(config file, uninterrupted in-process reference losses by step) for a 40-step run saving every 5."""
    config = tiny_pretrain_config(tiny_dataset, total_steps=KILL_TEST_STEPS)
    config.ckpt.every_steps = 5
    tmp = tmp_path_factory.mktemp("kill")
    config_file = write_config_file(str(tmp / "config.py"), config)
    pretrain.train(config, str(tmp / "reference"))
    return config_file, {r["step"]: r["loss"] for r in read_metrics(str(tmp / "reference"))}


@pytest.mark.multiprocess
def test_killed_and_preempted_runs_reproduce_uninterrupted_losses(kill_test_config, tmp_path):
    """SIGKILL during an async save, SIGKILL between saves, SIGTERM (preemption, exit 75), then a full rerun:
    every step any attempt logged has exactly the loss of the uninterrupted run."""
    config_file, reference = kill_test_config
    workdir, ckpt_dir = str(tmp_path / "killed"), str(tmp_path / "killed" / "checkpoints")
    cmd = cli(workdir, config=config_file)
    attempts = []

    # A persistent compilation cache: attempts after the first skip the compiles (the same executables).
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"}

    running = []

    def start():
        running.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True))
        return running[-1]

    def finish(proc, expected_rc):
        out = proc.communicate(timeout=240)[0]
        assert proc.returncode == expected_rc, out[-3000:]
        attempts.append(read_metrics(workdir))
        return out

    try:
        # 1. SIGKILL while the async save of step 10 is being written (step 5 is complete by then).
        proc = start()
        wait_for(lambda: any(n.startswith("10.") for n in tmp_saves(ckpt_dir)), proc, "an async save of step 10")
        os.kill(proc.pid, signal.SIGKILL)
        finish(proc, -signal.SIGKILL)
        assert tmp_saves(ckpt_dir), "the save finished before the kill landed"
        assert "5" in os.listdir(ckpt_dir) and "10" not in os.listdir(ckpt_dir)
        marker = os.path.join(ckpt_dir, tmp_saves(ckpt_dir)[0], "left_by_the_killed_run")
        open(marker, "w").close()
        # 2. The same command: resumes from the latest complete step and removes the interrupted save (its own
        #    save of step 10 reuses the name, hence the marker); SIGKILL it between saves.
        proc = start()
        wait_for(lambda: last_logged_step(workdir) >= 13, proc, "step 13")
        os.kill(proc.pid, signal.SIGKILL)
        out = finish(proc, -signal.SIGKILL)
        assert "Resuming from checkpoint step 5 " in out
        assert not os.path.exists(marker)
        # 3. SIGTERM: a checkpoint at the next step boundary, one line, exit 75.
        proc = start()
        seen = wait_for(lambda: last_logged_step(workdir) >= 17 and last_logged_step(workdir), proc, "step 17")
        os.kill(proc.pid, signal.SIGTERM)
        out = finish(proc, preemption.PREEMPTED_EXIT_CODE)
        saved = int(out.split("Preempted: saved checkpoint step ")[1].split(";")[0])
        assert seen <= saved <= seen + 3 and saved < KILL_TEST_STEPS  # the loop runs <= 1 step ahead of the log
        assert f"Preempted: saved checkpoint step {saved}; re-run the same command to resume" in out
        assert str(saved) in os.listdir(ckpt_dir) and attempts[-1][-1]["step"] == saved  # no step ran after it
        # 4. The same command runs to the end.
        out = finish(start(), 0)
    finally:
        for proc in running:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
    assert f"Resuming from checkpoint step {saved} " in out
    assert [r["step"] for r in attempts[-1]] == list(range(1, KILL_TEST_STEPS + 1))
    for rows in attempts:
        assert {r["step"]: r["loss"] for r in rows} == {r["step"]: reference[r["step"]] for r in rows}


@pytest.mark.multiprocess
@pytest.mark.parametrize("override,message", [
    ("--config.data.bogus=3", "config.data has no field 'bogus'"),
    ("--config.modle.depth=2", "(did you mean --config.model?)"),
    ("--config.data.global_batch_size=0", "data.global_batch_size=0: must be a positive integer"),
    ("--config.mae.mask_ratio=1.5", "mae.mask_ratio=1.5: must lie in (0, 1)"),
    ("--config.model.mask_ratio=0.6", "--config.model.mask_ratio: the field moved; use --config.mae.mask_ratio"),
    ("--config.data.path=/nonexistent/data", "data.path='/nonexistent/data' does not exist"),
    ("--config.mesh.shape=(3,1,1)", "mesh.shape=(3, 1, 1) uses 3 devices but 8 are available"),
    ("--config.data.global_batch_size=12", "data.global_batch_size=12 does not split into optim.grad_accum_steps=1 "
                                           "micro-batches over the data-parallel size 8"),
    ("--config.model.heads=5", "model.width=192 is not divisible by model.heads=5"),
])
def test_bad_input_fails_in_one_line(tmp_path, override, message):
    extra = ["--config.data.source=arrayrecord"] if "data.path" in override else []
    proc = subprocess.run(cli(str(tmp_path / "wd"), override, *extra), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


@pytest.mark.multiprocess
def test_workdir_that_is_a_file(tmp_path):
    path = tmp_path / "afile"
    path.write_text("x")
    proc = subprocess.run(cli(str(path)), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "is a file, not a directory" in proc.stderr.strip().splitlines()[-1]
    assert path.read_text() == "x"


def test_standalone_evals_equal_end_of_run_evals(finished_run, tmp_path):
    from mim_jax.config.cli import load_config_file
    from mim_jax.evaluate.__main__ import evaluate
    workdir, config = finished_run
    for eval_name, keys in (("linear_probe", ("top1", "top5")), ("knn", ("top1", "top5"))):
        eval_cfg = load_config_file(f"configs/{eval_name}.py")
        eval_cfg.init_from = workdir
        eval_cfg.eval.update(config.evals[eval_name].to_dict())
        baselines = ((False, eval_name), (True, f"{eval_name}_random_init"))
        for random_init, name in baselines if eval_name == "linear_probe" else baselines[:1]:
            eval_cfg.random_init = random_init
            result = evaluate(eval_cfg, str(tmp_path))
            in_run = json.load(open(os.path.join(workdir, "evals", f"{name}.json")))
            assert [result[k] for k in keys] == [in_run[k] for k in keys]
            assert result["step"] == (0 if random_init else 6)
        assert os.path.isfile(tmp_path / "evals" / f"{eval_name}.json")
    loss_cfg = load_config_file("configs/recon_loss.py")
    loss_cfg.init_from = workdir
    result = evaluate(loss_cfg, str(tmp_path))
    assert result["loss"] == pytest.approx(json.load(open(os.path.join(workdir, "evals", "val_loss.json")))["loss"],
                                           rel=1e-6)


def test_a_failed_start_closes_its_managers_and_creates_nothing_in_resume_from(tiny_dataset, tmp_path, monkeypatch):
    """orbax keeps threads per manager until close(): a run that fails after opening one must still close it."""
    import orbax.checkpoint as ocp
    from mim_jax.config.validation import ConfigError
    from mim_jax.train import checkpoints
    opened, closed = [], []
    open_manager, close_manager = checkpoints.checkpoint_manager, ocp.CheckpointManager.close
    open_reader = checkpoints.checkpoint_reader
    monkeypatch.setattr(checkpoints, "checkpoint_manager", lambda *a, **k: opened.append(open_manager(*a, **k))
                        or opened[-1])
    monkeypatch.setattr(checkpoints, "checkpoint_reader", lambda *a: opened.append(open_reader(*a)) or opened[-1])
    monkeypatch.setattr(ocp.CheckpointManager, "close", lambda self: closed.append(self) or close_manager(self))
    config = tiny_pretrain_config(tiny_dataset)
    config.ckpt.resume_from = str(tmp_path / "empty_run")
    os.makedirs(config.ckpt.resume_from)
    with pytest.raises(ConfigError, match=r"ckpt.resume_from=.*empty_run' has no checkpoint"):
        pretrain.train(config, str(tmp_path / "wd"))
    assert len(opened) == 2  # the run's own manager, and the one that read resume_from
    assert all(any(c is m for c in closed) for m in opened)
    assert os.listdir(config.ckpt.resume_from) == []  # the other run's directory is only read: nothing created
