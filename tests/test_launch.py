"""Cluster launchers: TPU-pod and SLURM dry runs, the TPU relaunch loop against a scripted gcloud, bad input, and
the SLURM job body's requeue-on-preemption with stand-in srun / scontrol executables."""
import importlib.util
import io
import os
import shlex
import signal
import subprocess
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_BODY = os.path.join(REPO, "launch", "slurm.sbatch")
L16 = "--config=configs/pretrain.py:model=L/16"


def load_script(name: str):
    """A launch/ script as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "launch", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tpu_pod():
    return load_script("tpu_pod")


@pytest.fixture(scope="module")
def slurm():
    return load_script("slurm")


def tpu_args(tpu_pod, *extra, workdir="gs://bucket/runs/l16"):
    return tpu_pod.parse_args(["--name=mae-l16", "--project=proj", "--zone=us-east5-a", "--accelerator_type=v5p-16",
                               *extra, "--", L16, f"--workdir={workdir}", "--config.seed=3"])


# ---- TPU pod ----

def test_tpu_dry_run_two_hosts(tpu_pod, capsys):
    args = tpu_args(tpu_pod, "--spot", "--dry_run")
    assert tpu_pod.launch(args) == 0
    out = capsys.readouterr().out
    commands = [shlex.split(line) for line in out.splitlines() if line.startswith(("gcloud", "git"))]
    assert "v5p-16: 8 chips on 2 host(s); mesh data=1 x fsdp=8 x tensor=1 (8 devices)" in out
    create = next(c for c in commands if c[3:5] == ["queued-resources", "create"])
    assert {"--accelerator-type=v5p-16", "--runtime-version=v2-alpha-tpuv5", "--spot", "--node-id=mae-l16",
            "--zone=us-east5-a", "--project=proj"} <= set(create)
    ssh = [c for c in commands if c[3:5] == ["tpu-vm", "ssh"]]
    assert len(ssh) == 2 and all("--worker=all" in c for c in ssh)        # install, then run: every worker
    install, run = (next(a for a in c if a.startswith("--command=")) for c in ssh)
    assert "pip install" in install and "[tpu]" in install
    assert ("python3 -m mim_jax.pretrain " + shlex.join([L16, "--workdir=gs://bucket/runs/l16", "--config.seed=3"])
            in run)                                                           # one command, the same workdir
    scp = next(c for c in commands if c[3:5] == ["tpu-vm", "scp"])
    assert "--worker=all" in scp
    order = [next(i for i, c in enumerate(commands) if c[3:5] == k) for k in
             (["tpu-vm", "describe"], ["queued-resources", "create"], ["tpu-vm", "scp"], ["tpu-vm", "ssh"])]
    assert order == sorted(order)


class ScriptedGcloud:
    """Stands in for subprocess.run: records commands, answers describe / ssh from scripted states."""

    def __init__(self, vm_states, run_statuses):
        self.vm_states, self.run_statuses, self.calls = list(vm_states), list(run_statuses), []

    def __call__(self, argv, text=True, capture_output=False):
        self.calls.append(argv)
        rc, stdout = 0, ""
        if argv[3:5] == ["tpu-vm", "describe"]:
            state = self.vm_states.pop(0)
            rc, stdout = (1, "") if state is None else (0, state + "\n")
        elif argv[3:5] == ["queued-resources", "describe"]:
            stdout = "ACTIVE\n"
        elif argv[3:5] == ["tpu-vm", "ssh"] and "mim_jax.pretrain" in argv[-1]:
            rc = self.run_statuses.pop(0)
        return subprocess.CompletedProcess(argv, rc, stdout, "")

    def named(self, *words):
        return [c for c in self.calls if c[3:3 + len(words)] == list(words)]


def test_tpu_relaunches_after_preemption_and_resumes(tpu_pod):
    # No slice -> create; the run is preempted (exit 75) and the spot VM is gone -> recreate; the same command
    # runs again and finishes.
    cloud = ScriptedGcloud(vm_states=[None, "PREEMPTED", "PREEMPTED"], run_statuses=[75, 0])
    out, sleeps = io.StringIO(), []
    status = tpu_pod.launch(tpu_args(tpu_pod, "--spot"), out=out, runner=cloud, sleep=sleeps.append)
    assert status == 0
    assert len(cloud.named("queued-resources", "create")) == 2
    runs = [c for c in cloud.named("tpu-vm", "ssh") if "mim_jax.pretrain" in c[-1]]
    assert len(runs) == 2 and runs[0] == runs[1]
    assert sleeps == [tpu_pod.POLL_SECONDS]
    assert "preempted (exit 75); relaunch 1 of 3" in out.getvalue()


def test_tpu_reuses_a_ready_slice_and_stops_on_a_real_failure(tpu_pod):
    cloud = ScriptedGcloud(vm_states=["READY", "READY"], run_statuses=[1])
    out = io.StringIO()
    assert tpu_pod.launch(tpu_args(tpu_pod), out=out, runner=cloud, sleep=lambda s: None) == 1
    assert cloud.named("queued-resources") == []                          # nothing created or deleted
    assert len([c for c in cloud.named("tpu-vm", "ssh") if "mim_jax.pretrain" in c[-1]]) == 1
    assert "exit status 1 (not a preemption); not relaunching" in out.getvalue()


def test_tpu_gives_up_after_max_restarts(tpu_pod):
    cloud = ScriptedGcloud(vm_states=["READY"] * 4, run_statuses=[75, 75])
    status = tpu_pod.launch(tpu_args(tpu_pod, "--max_restarts=1"), out=io.StringIO(), runner=cloud,
                            sleep=lambda s: None)
    assert status == tpu_pod.PREEMPTED_EXIT_CODE
    assert len([c for c in cloud.named("tpu-vm", "ssh") if "mim_jax.pretrain" in c[-1]]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--name=x", "--project=p", "--zone=z", "--accelerator_type=v9-8"], "is not a TPU accelerator type"),
    (["--name=x", "--project=p", "--accelerator_type=v5p-16"], "--zone is required"),
    (["--name=x", "--zone=z", "--accelerator_type=v5p-16"], "--project is required"),
    (["--name=Bad_Name", "--project=p", "--zone=z", "--accelerator_type=v5p-16"], "--name='Bad_Name'"),
    (["--name=x", "--project=p", "--zone=z", "--accelerator_type=v5p-16", "--", L16, "--workdir=gs://b/r",
      "--config.mesh.shape=(1,1,3)"], "v5p-16 (8 chips on 2 host(s)) gives 8 devices, but mesh.shape=(1, 1, 3)"),
    (["--name=x", "--project=p", "--zone=z", "--accelerator_type=v5p-16", "--", L16, "--workdir=/tmp/run"],
     "is local to each of the 2 TPU VM workers"),
    (["--name=x", "--project=p", "--zone=z", "--", L16, "--workdir=gs://b/r", "--config.plan.topology="],
     "pass --accelerator_type"),
])
def test_tpu_bad_input_fails_before_anything_runs(tpu_pod, argv, message, capsys, monkeypatch):
    if "--" not in argv:
        argv = argv + ["--", L16, "--workdir=gs://b/r"]
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    assert tpu_pod.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_tpu_default_slice_comes_from_the_config(tpu_pod, capsys):
    args = tpu_pod.parse_args(["--name=maws", "--project=p", "--zone=z", "--dry_run", "--",
                               "--config=configs/pretrain.py:model=6.5B/14,recipe=maws", "--workdir=gs://b/maws"])
    assert tpu_pod.launch(args) == 0
    out = capsys.readouterr().out
    assert "v5p-256: 128 chips on 32 host(s); mesh data=1 x fsdp=128 x tensor=1" in out
    assert "--accelerator-type=v5p-256" in out


# ---- SLURM ----

def test_slurm_dry_run_two_nodes(slurm, capsys, tmp_path):
    workdir = tmp_path / "runs" / "l16"
    args = slurm.parse_args(["--nodes=2", "--gpus_per_node=8", "--partition=gpu", "--dry_run", "--", L16,
                             f"--workdir={workdir}", "--config.mesh.shape=(1,-1,1)"])
    assert slurm.submit(args) == 0
    out = capsys.readouterr().out
    sbatch = shlex.split(next(line for line in out.splitlines() if line.startswith("sbatch")))
    assert {"--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--requeue", "--signal=USR1@300",
            "--partition=gpu", f"--output={workdir}/slurm-%j.out"} <= set(sbatch)
    body = sbatch.index(JOB_BODY)
    assert sbatch[body + 1:] == [L16, f"--workdir={workdir}", "--config.mesh.shape=(1,-1,1)"]
    srun = shlex.split(next(line for line in out.splitlines() if line.startswith("srun")))
    assert srun[-5:-3] == ["-m", "mim_jax.pretrain"] and f"--workdir={workdir}" in srun
    assert "16 processes, one per GPU; mesh data=1 x fsdp=16 x tensor=1 (16 devices)" in out
    assert not workdir.exists()  # a dry run creates nothing


def test_slurm_submits_with_an_absolute_workdir(slurm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []

    def sbatch(argv, text=True, capture_output=True):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "Submitted batch job 4242\n", "")

    out = io.StringIO()
    config = f"--config={REPO}/configs/pretrain.py:model=L/16"  # the test runs in another directory
    args = slurm.parse_args(["--nodes=1", "--gpus_per_node=4", "--", config, "--workdir=rel/run",
                             "--config.data.global_batch_size=64"])
    assert slurm.submit(args, out=out, runner=sbatch) == 0
    assert calls[0][-1] == "--config.data.global_batch_size=64"
    assert f"--workdir={tmp_path}/rel/run" in calls[0] and (tmp_path / "rel" / "run").is_dir()
    assert "Submitted batch job 4242" in out.getvalue()


@pytest.mark.parametrize("argv, message", [
    (["--nodes=3", "--gpus_per_node=8"], "--nodes=3 x --gpus_per_node=8: data.global_batch_size=4096"),
    (["--nodes=2", "--gpus_per_node=8", "--", L16, "--workdir=/w", "--config.mesh.shape=(1,8,1)"],
     "gives 16 devices, but mesh.shape=(1, 8, 1) uses 8"),
    (["--nodes=0"], "--nodes=0"),
    (["--nodes=1", "--time=tomorrow"], "--time='tomorrow'"),
    (["--nodes=1", "--", L16], "no --workdir"),
])
def test_slurm_bad_input_fails_before_submitting(slurm, argv, message, capsys, monkeypatch):
    if "--" not in argv:
        argv = argv + ["--", L16, "--workdir=/w"]
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))
    assert slurm.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


# ---- the SLURM job body (launch/slurm.sbatch) with stand-in srun / scontrol ----

def fake_cluster(tmp_path, srun_script: str) -> dict:
    """PATH with `srun` running `srun_script` and `scontrol` recording its arguments; SLURM job variables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/bash\necho \"$@\" > \"$FAKE_LOG/srun\"\n"
                                  "echo \"$XLA_FLAGS\" > \"$FAKE_LOG/xla_flags\"\n" + srun_script)
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho \"$@\" > \"$FAKE_LOG/scontrol\"\n")
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path),
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "16"}


@pytest.mark.multiprocess
@pytest.mark.parametrize("status, requeued, script_status", [(75, True, 0), (3, False, 3), (0, False, 0)])
def test_job_body_requeues_only_a_preempted_run(tmp_path, status, requeued, script_status):
    env = fake_cluster(tmp_path, f"exit {status}\n")
    result = subprocess.run(["bash", JOB_BODY, L16, "--workdir=/shared/run"], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == script_status, result.stdout + result.stderr
    assert (tmp_path / "srun").read_text().split() == ["--kill-on-bad-exit=1", "python3", "-m", "mim_jax.pretrain",
                                                       L16, "--workdir=/shared/run"]
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in (tmp_path / "xla_flags").read_text()
    assert ((tmp_path / "scontrol").read_text().split() == ["requeue", "4242"]) if requeued \
        else not (tmp_path / "scontrol").exists()


@pytest.mark.multiprocess
def test_job_body_waits_through_sigterm_for_the_checkpoint(tmp_path):
    # SLURM preemption signals the batch shell too; it must keep waiting while the run saves, then requeue.
    env = fake_cluster(tmp_path, "trap '' TERM\ntouch \"$FAKE_LOG/started\"\nsleep 1.5\nexit 75\n")
    proc = subprocess.Popen(["bash", JOB_BODY, "--workdir=/w"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "SIGTERM: waiting" in out and (tmp_path / "scontrol").read_text().split() == ["requeue", "4242"]


def test_launchers_agree_on_the_preemption_exit_code(tpu_pod):
    from mim_jax.train.preemption import PREEMPTED_EXIT_CODE
    with open(JOB_BODY) as f:
        assert f"\nPREEMPTED_EXIT_CODE={PREEMPTED_EXIT_CODE} " in f.read()
    assert tpu_pod.PREEMPTED_EXIT_CODE == load_script("local_multihost").PREEMPTED_EXIT_CODE == PREEMPTED_EXIT_CODE


# ---- local multi-host launcher: a preemption notice reaches every process ----

def test_local_launcher_forwards_sigterm_and_returns_the_preemption_status(tmp_path, monkeypatch, capsys):
    launcher = load_script("local_multihost")
    script = ("import os, signal, sys, time\n"
              "def saved(signum, frame):\n"
              "    print('saved after', signal.Signals(signum).name, flush=True); sys.exit(75)\n"
              "signal.signal(signal.SIGTERM, saved)\n"
              "open(os.path.join(os.environ['READY_DIR'], os.environ['MIM_JAX_PROCESS_ID']), 'w').close()\n"
              "time.sleep(60)\n")
    monkeypatch.setenv("READY_DIR", str(tmp_path))

    def notice_when_ready():  # like a cluster's preemption notice, once both processes listen for it
        deadline = time.monotonic() + 20
        while len(os.listdir(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=notice_when_ready, daemon=True).start()
    start = time.monotonic()
    status = launcher.main(["--num_processes=2", "--devices_per_process=1", "--timeout_s=60", "--", "-c", script])
    text = capsys.readouterr().out
    assert status == 75, text
    assert "[p0] saved after SIGTERM" in text and "[p1] saved after SIGTERM" in text
    assert "forwarded SIGTERM" in text and time.monotonic() - start < 30
    assert signal.getsignal(signal.SIGTERM) is before  # the launcher put the test process's handler back
