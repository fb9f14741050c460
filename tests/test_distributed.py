"""Multi-process runs: env rules of mim_jax.parallel.distributed, the local launcher, 2 processes == 1 process, resume on
another process / device count, and a preemption that reaches one process."""
import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import pytest

from conftest import tiny_pretrain_config, write_config_file
from mim_jax.errors import ConfigError
from mim_jax.parallel import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "launch", "local_multihost.py")
CLUSTER_PREFIXES = ("MIM_JAX_", "SLURM_", "OMPI_", "TPU_", "MEGASCALE_")


def load_launcher():
    import importlib.util
    spec = importlib.util.spec_from_file_location("local_multihost", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def clean_env(monkeypatch):
    """No cluster variables from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith(CLUSTER_PREFIXES):
            monkeypatch.delenv(name)
    return monkeypatch


def set_env(monkeypatch, **values):
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))


# ---- env rules (nothing is initialized) ----

def test_no_cluster_is_single_process(clean_env):
    assert distributed.resolve() == distributed.Plan("single")


def test_explicit_variables(clean_env):
    set_env(clean_env, MIM_JAX_COORDINATOR_ADDRESS="10.0.0.1:1234", MIM_JAX_NUM_PROCESSES=4, MIM_JAX_PROCESS_ID=3,
            MIM_JAX_LOCAL_DEVICE_IDS="0,1")
    assert distributed.resolve() == distributed.Plan("explicit", 4, 3, "10.0.0.1:1234", (0, 1))


SLURM = dict(SLURM_JOB_ID=4242, SLURM_STEP_NODELIST="node[001-002]", SLURM_NTASKS=2, SLURM_PROCID=1, SLURM_LOCALID=0)


def test_slurm_detected_via_jax(clean_env):
    set_env(clean_env, **SLURM)
    assert distributed.resolve() == distributed.Plan("auto", 2, 1, cluster="slurm")
    set_env(clean_env, SLURM_NTASKS=1, SLURM_PROCID=0)  # one task: nothing to join
    assert distributed.resolve().mode == "single"


def test_explicit_wins_and_off_switch(clean_env):
    set_env(clean_env, **SLURM)
    set_env(clean_env, MIM_JAX_COORDINATOR_ADDRESS="localhost:5000", MIM_JAX_NUM_PROCESSES=2, MIM_JAX_PROCESS_ID=0)
    assert distributed.resolve().mode == "explicit"
    for name in distributed.EXPLICIT_VARS:
        clean_env.delenv(name)
    set_env(clean_env, MIM_JAX_DISTRIBUTED="off")
    assert distributed.resolve().mode == "single"


def test_multihost_tpu_detected_via_jax(clean_env):
    from jax._src.clusters import cloud_tpu_cluster
    clean_env.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    set_env(clean_env, TPU_SKIP_MDS_QUERY=1,  # no GCE metadata server here: jax then looks at the GKE variables
            TPU_WORKER_HOSTNAMES="host-0,host-1", TPU_WORKER_ID=1, MEGASCALE_NUM_SLICES=2, MEGASCALE_SLICE_ID=1)
    assert distributed.resolve() == distributed.Plan("auto", 4, 3, cluster="gketpu")


@pytest.mark.parametrize("env,variable", [
    (dict(MIM_JAX_COORDINATOR_ADDRESS="h:1", MIM_JAX_NUM_PROCESSES="two", MIM_JAX_PROCESS_ID=0),
     "MIM_JAX_NUM_PROCESSES='two' is not an integer"),
    (dict(MIM_JAX_COORDINATOR_ADDRESS="h:1", MIM_JAX_NUM_PROCESSES=2, MIM_JAX_PROCESS_ID=2),
     "MIM_JAX_PROCESS_ID=2 must be < MIM_JAX_NUM_PROCESSES=2"),
    (dict(MIM_JAX_COORDINATOR_ADDRESS="h:1", MIM_JAX_NUM_PROCESSES=0, MIM_JAX_PROCESS_ID=0),
     "MIM_JAX_NUM_PROCESSES=0 must be >= 1"),
    (dict(MIM_JAX_COORDINATOR_ADDRESS="nohost", MIM_JAX_NUM_PROCESSES=2, MIM_JAX_PROCESS_ID=0),
     "MIM_JAX_COORDINATOR_ADDRESS='nohost' must be host:port"),
    (dict(MIM_JAX_COORDINATOR_ADDRESS="h:1", MIM_JAX_NUM_PROCESSES=2),
     "MIM_JAX_PROCESS_ID not set"),
    (dict(MIM_JAX_COORDINATOR_ADDRESS="h:1", MIM_JAX_NUM_PROCESSES=2, MIM_JAX_PROCESS_ID=0,
          MIM_JAX_LOCAL_DEVICE_IDS="0,x"), "MIM_JAX_LOCAL_DEVICE_IDS='0,x'"),
    (dict(MIM_JAX_LOCAL_DEVICE_IDS="0"), "MIM_JAX_LOCAL_DEVICE_IDS is set but this is a single-process run"),
    ({**SLURM, "SLURM_NTASKS": "abc"}, "SLURM_NTASKS='abc' is not an integer"),
    ({**SLURM, "SLURM_PROCID": 2}, "SLURM_PROCID=2 must be < SLURM_NTASKS=2"),
])
def test_bad_environment_names_the_variable(clean_env, env, variable):
    set_env(clean_env, **env)
    with pytest.raises(ConfigError) as err:
        distributed.resolve()
    assert variable in str(err.value)


def test_initialize_is_idempotent(clean_env, capsys):
    first = distributed.initialize()
    again = distributed.initialize()
    assert first is again and first.mode == "single" and distributed.is_initialized()
    assert capsys.readouterr().out.count("distributed:") <= 1
    # Too late for a multi-process start once the backend exists: a clear error, not a hang.
    jax.devices()
    with pytest.raises(RuntimeError, match="must run before any jax computation"):
        distributed._start(distributed.Plan("explicit", 2, 0, "localhost:1"))


# ---- launcher ----

def test_launcher_dry_run_prints_commands(capsys):
    launcher = load_launcher()
    assert launcher.main(["--num_processes=2", "--devices_per_process=4", "--port=4321", "--dry_run", "--",
                          "-m", "mim_jax.pretrain", "--workdir=/tmp/x y"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for i, line in enumerate(lines):
        assert "JAX_PLATFORMS=cpu" in line and "--xla_force_host_platform_device_count=4" in line
        assert "MIM_JAX_COORDINATOR_ADDRESS=localhost:4321" in line and "MIM_JAX_NUM_PROCESSES=2" in line
        assert f"MIM_JAX_PROCESS_ID={i}" in line and line.endswith("-m mim_jax.pretrain '--workdir=/tmp/x y'")


@pytest.mark.multiprocess
def test_launcher_kills_the_rest_when_one_fails():
    launcher = load_launcher()
    script = ("import os, signal, sys, time\n"
              "pid = int(os.environ['MIM_JAX_PROCESS_ID'])\n"
              "print('hello from', pid, os.environ['XLA_FLAGS'].split()[-1], flush=True)\n"
              "if pid == 1: time.sleep(0.5); sys.exit(3)\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)\n")
    out, start = io.StringIO(), time.monotonic()
    status = launcher.run(["-c", script], 2, 3, grace_s=1.0, out=out)
    assert status == 3 and time.monotonic() - start < 20
    text = out.getvalue()
    assert "[p0] hello from 0 --xla_force_host_platform_device_count=3" in text
    assert "[p1] hello from 1" in text and "process 1 exited with 3" in text


# ---- 2 processes x 4 devices == 1 process x 8 devices ----

def tiny_config_file(path: str, dataset_dir: str) -> str:
    """A config file equal to tiny_pretrain_config with a total_steps-independent schedule.

    The LR is constant after warmup (min_lr = peak), so a run to 6 steps resumed to 9 sees the same LRs as an
    uninterrupted run to 9.
    """
    config = tiny_pretrain_config(dataset_dir, total_steps=9)
    config.optim.min_lr = config.optim.base_lr * config.data.global_batch_size / 256
    config.ckpt.every_steps = 3
    config.evals.linear_probe.at_end = False
    return write_config_file(path, config)


def subprocess_env(devices: int, cache_dir: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_PREFIXES)}
    # -O0 codegen: XLA:CPU compiles this model 2-4x faster; every run uses it, so they run the same program.
    # A persistent compilation cache lets a rerun skip compiles (in a multi-process run only process 0 hits it).
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_backend_optimization_level=0 "
                                              f"--xla_force_host_platform_device_count={devices}",
               JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return env


def run(cmd: list, env: dict) -> str:
    """stdout + stderr of `cmd`, asserting it exits 0 (no retry: an XLA:CPU rendezvous abort fails the test)."""
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return output


def pretrain_cmd(config_file: str, workdir: str, total_steps: int) -> list:
    return ["-m", "mim_jax.pretrain", f"--config={config_file}", f"--workdir={workdir}",
            f"--config.total_steps={total_steps}"]


def launch_cmd(args: list) -> list:
    return [sys.executable, LAUNCHER, "--num_processes=2", "--devices_per_process=4", "--timeout_s=240", "--",
            *args]


def losses(workdir: str) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = [r["step"] for r in rows]
    assert len(steps) == len(set(steps)), f"duplicate metric rows (more than one writer?): {steps}"
    return {r["step"]: r["loss"] for r in rows}


class Reference:
    """The reference run, 1 process x 8 devices uninterrupted to step 9, started in the background (it overlaps
    with the first 2-process run: both spend much of their time in single-threaded compiles)."""

    def __init__(self, config_file: str, workdir: str, env: dict, log_path: str):
        self.cmd = [sys.executable, *pretrain_cmd(config_file, workdir, 9)]
        self.workdir, self.env, self.log_path = workdir, env, log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._losses = None

    def losses(self) -> dict:
        """Losses by step (waits for the run, which must exit 0)."""
        if self._losses is None:
            assert self.proc.wait(timeout=300) == 0, open(self.log_path).read()[-4000:]
            self._losses = losses(self.workdir)
        return self._losses


@pytest.fixture(scope="module")
def one_process_run(tiny_dataset, tmp_path_factory):
    """(config file, env maker, the reference run)."""
    tmp = tmp_path_factory.mktemp("distributed")
    config_file = tiny_config_file(str(tmp / "tiny.py"), tiny_dataset)
    env = functools.partial(subprocess_env, cache_dir=str(tmp / "jax_cache"))
    reference = Reference(config_file, str(tmp / "one_process"), env(8), str(tmp / "one_process.log"))
    yield config_file, env, reference
    if reference.proc.poll() is None:
        reference.proc.kill()
        reference.proc.wait()


def assert_losses_match(got: dict, want: dict) -> None:
    for step in got:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-7), (step, got[step], want[step])
    print(f"max |loss(2 processes) - loss(1 process)| over steps {min(got)}..{max(got)}:",
          max(abs(got[s] - want[s]) for s in got))


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.distributed
def test_two_processes_match_one_process_and_resume(one_process_run, tmp_path):
    config_file, env, ref = one_process_run
    mp_dir = str(tmp_path / "two_processes")
    # 2 processes x 4 devices (data-parallel mesh) to step 6 (checkpoints 3 and 6), then the same command
    # with total_steps=9: it resumes from the checkpoint the two processes wrote together.
    first = run(launch_cmd(pretrain_cmd(config_file, mp_dir, 6)), env(4))
    assert "[p0] distributed: 2 process(es), 8 devices (4 local per process, cpu)" in first
    assert sorted(os.listdir(os.path.join(mp_dir, "checkpoints"))) == ["3", "6"]
    mp_first = losses(mp_dir)
    second = run(launch_cmd(pretrain_cmd(config_file, mp_dir, 9)), env(4))
    assert "[p0] Resuming from checkpoint step 6" in second

    mp, ref = losses(mp_dir), ref.losses()
    assert sorted(ref) == sorted(mp) == list(range(1, 10)) and sorted(mp_first) == list(range(1, 7))
    assert all(mp_first[s] == mp[s] for s in mp_first)  # the resumed run kept the first run's rows
    assert_losses_match(mp, ref)
    # Only process 0 logs: one progress line per step, all from [p0]; one TensorBoard file per run.
    assert sum(line.startswith("[p0] step ") for line in first.splitlines()) == 6
    assert not any(line.startswith("[p1] step ") for line in (first + second).splitlines())
    assert sum(name.startswith("events.out.tfevents") for name in os.listdir(mp_dir)) == 2


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.distributed
def test_two_processes_fsdp_mesh(one_process_run, tmp_path):
    """Parameters sharded over devices of both processes (data=2, fsdp=4): same losses, a sharded checkpoint."""
    config_file, env, ref = one_process_run
    mp_dir = str(tmp_path / "fsdp")
    cmd = pretrain_cmd(config_file, mp_dir, 3) + ["--config.mesh.shape=(2,4,1)",
                                                  "--config.mesh.max_replicated_fraction=1.0"]
    run(launch_cmd(cmd), env(4))
    assert os.path.isdir(os.path.join(mp_dir, "checkpoints", "3"))
    assert_losses_match(losses(mp_dir), ref.losses())


def start_processes(launcher, args: list, num_processes: int, devices: int, env: dict, log_dir: str) -> list:
    """(Popen, log path) of each process of a local multi-process run, started directly (to signal one by pid)."""
    port, procs = launcher.free_port(), []
    for i, (argv, _) in enumerate(launcher.commands(args, num_processes, devices, port)):
        path = os.path.join(log_dir, f"p{i}.log")
        extra = launcher.process_env(i, num_processes, devices, port, base=env)
        with open(path, "w") as log:
            procs.append((subprocess.Popen(argv, cwd=REPO, env={**env, **extra}, stdout=log,
                                           stderr=subprocess.STDOUT), path))
    return procs


def preempt_one_process(procs: list, workdir: str, after_step: int) -> list:
    """Wait until step `after_step` is logged, SIGTERM process 1 only, wait; returns the exit codes."""
    deadline = time.time() + 240
    while time.time() < deadline and all(p.poll() is None for p, _ in procs):
        rows = losses(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else {}
        if max(rows, default=0) >= after_step:
            os.kill(procs[1][0].pid, signal.SIGTERM)
            break
        time.sleep(0.05)
    codes = []
    for proc, _ in procs:
        try:
            codes.append(proc.wait(timeout=120))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.distributed
def test_resume_elsewhere_then_preempt_one_process(one_process_run, tmp_path):
    """The 1 process x 8 devices checkpoint of step 6 resumes on 2 processes x 2 devices (4 devices): steps 7-9
    match the run that went on unchanged. Then SIGTERM to process 1 alone: both processes save the same step
    and exit 75."""
    config_file, env, ref = one_process_run
    reference = ref.losses()
    launcher = load_launcher()
    workdir, logs = str(tmp_path / "elsewhere"), str(tmp_path / "logs")
    shutil.copytree(ref.workdir, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "9"))
    os.makedirs(logs)
    # total_steps=400 keeps the schedule of the reference (constant after warmup) and leaves time to preempt.
    procs = start_processes(launcher, pretrain_cmd(config_file, workdir, 400), 2, 2, env(2), logs)
    codes = preempt_one_process(procs, workdir, after_step=10)
    outputs = [open(path).read() for _, path in procs]
    assert codes == [75, 75], outputs[0][-3000:] + outputs[1][-3000:]
    assert "distributed: 2 process(es), 4 devices (2 local per process, cpu)" in outputs[0]
    assert "Resuming from checkpoint step 6" in outputs[0]
    saved = int(outputs[0].split("Preempted: saved checkpoint step ")[1].split(";")[0])
    assert saved >= 10 and str(saved) in os.listdir(os.path.join(workdir, "checkpoints"))
    got = losses(workdir)
    assert sorted(got) == list(range(1, saved + 1))  # no step ran after the agreed one
    assert_losses_match({s: got[s] for s in (7, 8, 9)}, reference)
