"""Test-wide setup: 8 fake CPU devices. XLA_FLAGS must be set before jax is imported."""
import json
import os

# LLVM optimization level 0 for XLA:CPU unless the caller chose one: the suite's programs are tiny and each is
# compiled once or twice, so compiling dominates (level 0: the suite in ~2/3 of the time, docs/testing.md).
_FLAGS = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
if "xla_backend_optimization_level" not in _FLAGS:
    _FLAGS += " --xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = _FLAGS.strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

import mim_jax  # noqa: E402,F401  (adds the XLA:CPU scheduler flag that keeps fake-device collectives in order)
from mim_jax.config.defaults import base_config  # noqa: E402
from mim_jax.data import synthetic  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_addoption(parser):
    parser.addoption("--paper-plans", action="store_true",
                     help="also run the paper_plans tier: memory plans of paper-scale cells (minutes of TPU compile each)")


def pytest_collection_modifyitems(config, items):
    """paper_plans tests run only with --paper-plans (docs/testing.md): each compiles a paper-sized step for TPU."""
    if config.getoption("--paper-plans"):
        return
    skip = pytest.mark.skip(reason="paper-scale TPU plan (minutes of compile); run with --paper-plans")
    for item in items:
        if "paper_plans" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    """A small generated 'shapes' dataset in real ArrayRecord shards (train 96, val 40, 36 px)."""
    out = str(tmp_path_factory.mktemp("data") / "shapes")
    synthetic.generate(out, num_train=96, num_val=40, image_size=36, seed=0, num_shards=2, num_workers=1)
    return out


def tiny_pretrain_config(dataset_dir: str, total_steps: int = 6, objective: str = "mae"):
    """A seconds-long config on `dataset_dir`: 32-px images, patch 8, width 32, batch 16 (MAE decoder 16 wide;
    SimMIM on 16-px mask cells, a 2 x 2 grid with 3 cells masked)."""
    c = base_config()
    c.objective = objective
    c.total_steps = total_steps
    c.model.update(dict(variant="Ti/16", width=32, depth=1, heads=2, mlp_dim=64, patch_size=8, image_size=32,
                        dtype="float32"))
    if objective in ("mae", "mae_teacher"):
        c.mae.decoder.update(dict(width=16, depth=1, heads=2, mlp_ratio=2))
    if objective == "simmim":
        c.simmim.mask_patch_size = 16
    c.data.update(dict(source="arrayrecord", path=dataset_dir, global_batch_size=16))
    c.optim.update(dict(base_lr=1e-3, warmup_steps=2))
    c.ckpt.update(dict(every_steps=3, max_to_keep=5, async_save=True))
    c.log.every_steps = 1
    c.evals.linear_probe.update(dict(epochs=3, warmup_epochs=1, batch_size=32, feature_batch_size=16))
    return c


def write_config_file(path: str, config) -> str:
    """A config file whose get_config() returns `config` (base_config plus the fields that differ), for CLI runs."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out
    base, wanted = flat(base_config().to_dict()), flat(config.to_dict())
    overrides = {k: v for k, v in wanted.items() if base.get(k) != v}
    with open(path, "w") as f:
        f.write("from mim_jax.config.defaults import base_config\n\n"
                f"OVERRIDES = {overrides!r}\n\n\n"
                "def get_config():\n"
                "    c = base_config()\n"
                "    for key, value in OVERRIDES.items():\n"
                "        *parents, leaf = key.split('.')\n"
                "        node = c\n"
                "        for p in parents:\n"
                "            node = node[p]\n"
                "        node[leaf] = value\n"
                "    return c\n")
    return path


def make_run_dir(run_dir: str, config, seed: int, step: int, poison: str = "") -> dict:
    """A pretraining workdir with config.json and one checkpoint at `step` of a fresh state (seed `seed`) on the
    data-parallel mesh; `poison` names a params leaf ('decoder/pred/bias') filled with NaN. Returns its params."""

    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    from mim_jax.parallel.sharding import make_mesh
    from mim_jax.train import checkpoints
    from mim_jax.train.program import build_program, model_signature

    state, _ = build_program(config, make_mesh(config.mesh)).init_state(seed)
    if poison:
        flat = traverse_util.flatten_dict(state.params, sep="/")
        flat[poison] = flat[poison] * jnp.nan
        state = state.replace(params=traverse_util.unflatten_dict(flat, sep="/"))
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())
    with checkpoints.checkpoint_manager(run_dir, max_to_keep=2, async_save=False) as manager:
        checkpoints.save(manager, step, state, {"signature": model_signature(config), "step": step})
    return jax.device_get(state.params)


def damage(step_dir):
    """Truncate every array data file of a saved step (as a full disk or a killed copy would)."""
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        if os.path.basename(root) == "d":
            for name in files:
                with open(os.path.join(root, name), "r+b") as f:
                    f.truncate(8)


def read_losses(workdir: str) -> dict:
    """{step: loss} of a run's metrics.jsonl train rows."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def assert_sigkill_resume_reproduces(config, tmp_path, timeout: int = 900) -> None:
    """Train `config` (16 steps, checkpoints every 5) uninterrupted; SIGKILL a CLI run of it after its step-10
    checkpoint, re-run the same command: every logged step must equal the uninterrupted run's loss exactly."""
    import signal
    import subprocess
    import sys
    import time

    from mim_jax.train import loop as pretrain
    assert config.total_steps == 16 and config.ckpt.every_steps == 5
    pretrain.train(config, str(tmp_path / "reference"))
    reference = read_losses(str(tmp_path / "reference"))
    assert sorted(reference) == list(range(1, 17))
    workdir = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "mim_jax.pretrain", f"--config={write_config_file(str(tmp_path / 'c.py'), config)}",
           f"--workdir={workdir}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not os.path.isdir(os.path.join(workdir, "checkpoints", "10")):
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    first = read_losses(workdir)
    assert 10 <= max(first) < 16, "the run must die after its step-10 checkpoint and before the end"
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Resuming from checkpoint step 10" in out.stdout
    resumed = read_losses(workdir)
    assert sorted(resumed) == list(range(1, 17))
    assert resumed == reference and {s: first[s] for s in first} == {s: reference[s] for s in first}
