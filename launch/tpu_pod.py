"""Pretrain on a Cloud TPU VM slice: create or reuse it, install this checkout on every worker, run on all at once.

    python launch/tpu_pod.py --name=mae-l16 --project=my-project --zone=us-east5-a [--accelerator_type=v5p-16]
        [--spot] [--max_restarts=3] [--dry_run] -- \\
        --config=configs/pretrain.py:model=L/16 --workdir=gs://my-bucket/runs/mae-l16 [--config.field=value ...]

Everything after `--` is what `python -m mim_jax.pretrain` gets on every worker. Before anything is created,
the config is loaded with those overrides and its mesh and global batch are checked against the slice
(devices = chips, one JAX process per TPU VM host); a mismatch, an unknown accelerator type or a missing
--zone / --project fails in one line.

Steps (`--dry_run` prints them, with the exact commands, and runs nothing):
1. `gcloud compute tpus tpu-vm describe`: a READY slice of that name is reused; otherwise a queued resource
   is requested (`--spot` for Spot capacity) and polled until ACTIVE.
2. `git archive HEAD` of this checkout is copied to every worker and installed there with the `tpu` extra.
3. The pretrain command runs on all workers at once (`tpu-vm ssh --worker=all`), its output streamed and
   appended to ~/mim_jax_pretrain.log on each worker.
4. If the slice was preempted (no longer READY) or the run exited with mim_jax's preemption code (75), the
   launcher waits, recreates the slice if needed, reinstalls and runs the same command again, at most
   --max_restarts times: the run resumes from the workdir's latest checkpoint. Any other failure stops.

Re-running the same launcher command later does the same: it reuses or recreates the slice and resumes.
A multi-host slice needs a workdir every worker sees: a gs:// bucket path (or a shared mount with
--shared_workdir).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mim_jax.cluster.launch_check import check_job, describe_mesh, load_pretrain_config, pretrain_flag, \
    run_launcher, split_at_dashes  # noqa: E402
from mim_jax.cluster.tpu_slices import Slice, parse_accelerator_type, slice_for_topology  # noqa: E402
from mim_jax.errors import ConfigError  # noqa: E402

PREEMPTED_EXIT_CODE = 75  # mim_jax.train.preemption.PREEMPTED_EXIT_CODE
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# On every worker, relative to the home directory (where ssh commands start and scp copies to).
REMOTE_DIR = "mim_jax"
REMOTE_ARCHIVE = "mim_jax_src.tar.gz"
REMOTE_LOG = "mim_jax_pretrain.log"
POLL_SECONDS = 30


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Launcher options before `--`; the pretraining arguments after it go in `.pretrain_args`."""
    own, pretrain_args = split_at_dashes(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     usage="%(prog)s --name=N --project=P --zone=Z [options] -- --config=... "
                                           "--workdir=gs://...")
    parser.add_argument("--name", required=True, help="TPU VM (and queued resource) name")
    parser.add_argument("--project", default="", help="Google Cloud project")
    parser.add_argument("--zone", default="", help="zone with capacity for the accelerator type, e.g. us-east5-a")
    parser.add_argument("--accelerator_type", default="",
                        help="e.g. v5p-256, v5litepod-16, v4-32, v6e-64 (default: from config.plan.topology)")
    parser.add_argument("--runtime_version", default="", help="TPU VM image (default: the generation's)")
    parser.add_argument("--spot", action="store_true", help="Spot capacity (cheaper, preemptible)")
    parser.add_argument("--max_restarts", type=int, default=3, help="relaunches after a preemption")
    parser.add_argument("--shared_workdir", action="store_true",
                        help="accept a non-gs:// workdir on a multi-host slice (a mount every worker shares)")
    parser.add_argument("--python", default="python3", help="Python on the TPU VMs")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(own)
    args.pretrain_args = pretrain_args
    return args


def check_args(args: argparse.Namespace) -> tuple[Slice, tuple[int, ...]]:
    """All checks that run before anything is created: names, zone, project, slice vs config, workdir."""
    if not NAME_RE.match(args.name):
        raise ConfigError(f"--name={args.name!r}: use lowercase letters, digits and hyphens, starting with a letter")
    for field, example in (("project", "my-project"), ("zone", "us-east5-a")):
        if not getattr(args, field):
            raise ConfigError(f"--{field} is required (e.g. --{field}={example}); the launcher never guesses where "
                              f"to rent a slice")
    if args.max_restarts < 0:
        raise ConfigError(f"--max_restarts={args.max_restarts} must be >= 0")
    config = load_pretrain_config(args.pretrain_args)
    tpu = parse_accelerator_type(args.accelerator_type) if args.accelerator_type \
        else slice_for_topology(config.plan.topology)
    job = f"{tpu.accelerator_type} ({tpu.chips} chips on {tpu.hosts} host(s))"
    shape = check_job(config, tpu.devices, tpu.hosts, job)
    workdir = pretrain_flag(args.pretrain_args, "workdir")
    if not workdir:
        raise ConfigError("no --workdir among the pretraining arguments after `--`; use a bucket path, e.g. "
                          "--workdir=gs://my-bucket/runs/NAME")
    if tpu.hosts > 1 and not workdir.startswith("gs://") and not args.shared_workdir:
        raise ConfigError(f"--workdir={workdir} is local to each of the {tpu.hosts} TPU VM workers; checkpoints "
                          f"must be shared: use gs://BUCKET/PATH (or pass --shared_workdir for a shared mount)")
    return tpu, shape


class Gcloud:
    """Runs (or, in a dry run, prints) gcloud and shell commands for one slice."""

    def __init__(self, args: argparse.Namespace, out=None, runner: Callable = subprocess.run):
        self.args, self.out, self.runner = args, out or sys.stdout, runner
        self.where = [f"--zone={args.zone}", f"--project={args.project}"]

    def say(self, text: str) -> None:
        """One launcher line."""
        print(f"[tpu_pod] {text}", file=self.out, flush=True)

    def run(self, argv: list[str], why: str, capture: bool = False) -> subprocess.CompletedProcess:
        """Print `why` and the command; run it unless this is a dry run."""
        print(f"# {why}\n{shlex.join(argv)}", file=self.out, flush=True)
        if self.args.dry_run:
            return subprocess.CompletedProcess(argv, 0, "", "")
        return self.runner(argv, text=True, capture_output=capture)

    def vm_state(self) -> Optional[str]:
        """READY / PREEMPTED / ... of the TPU VM, None when it does not exist."""
        result = self.run(["gcloud", "compute", "tpus", "tpu-vm", "describe", self.args.name, *self.where,
                           "--format=value(state)"], "is there a slice of this name already?", capture=True)
        if result.returncode != 0:
            return None
        return result.stdout.strip() or None

    def create(self, tpu: Slice) -> None:
        """Request the slice as a queued resource (replacing a dead one) and wait until it is ACTIVE."""
        name = self.args.name
        qr = ["gcloud", "compute", "tpus", "queued-resources"]
        self.run([*qr, "delete", name, *self.where, "--force", "--quiet"],
                 "drop a previous (preempted or failed) request of this name; fails harmlessly if there is none",
                 capture=True)
        create = [*qr, "create", name, f"--node-id={name}", *self.where, f"--accelerator-type={tpu.accelerator_type}",
                  f"--runtime-version={self.args.runtime_version or tpu.generation.runtime_version}"]
        result = self.run(create + (["--spot"] if self.args.spot else []), "request the slice")
        if result.returncode:
            raise SystemExit(f"[tpu_pod] creating the queued resource failed (exit {result.returncode})")
        describe = [*qr, "describe", name, *self.where, "--format=value(state.state)"]
        if self.args.dry_run:
            self.run(describe, f"poll every {POLL_SECONDS}s until ACTIVE")
            return
        while True:
            state = self.runner(describe, text=True, capture_output=True).stdout.strip()
            self.say(f"queued resource {name}: {state or 'unknown'}")
            if state == "ACTIVE":
                return
            if state in ("FAILED", "SUSPENDED"):
                raise SystemExit(f"[tpu_pod] queued resource {name} is {state}; see `{shlex.join(describe[:-1])}`")
            time.sleep(POLL_SECONDS)

    def ssh_all(self, command: str, why: str) -> int:
        """Run `command` on every worker at once; returns the exit status."""
        argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.args.name, *self.where, "--worker=all",
                f"--command={command}"]
        return self.run(argv, why).returncode


def install_command(python: str) -> str:
    """Unpack the shipped checkout into REMOTE_DIR and install it (with libtpu) on a worker."""
    return (f"set -e; cd; rm -rf {REMOTE_DIR}; mkdir -p {REMOTE_DIR}; tar -xzf {REMOTE_ARCHIVE} -C {REMOTE_DIR}; "
            f"{python} -m pip install -q -e './{REMOTE_DIR}[tpu]'")


def pretrain_command(python: str, pretrain_args: Sequence[str]) -> str:
    """The command every worker runs: pretrain, output appended to REMOTE_LOG, its own exit status kept."""
    return (f"cd; cd {REMOTE_DIR} && {python} -m mim_jax.pretrain {shlex.join(pretrain_args)} 2>&1 | "
            f"tee -a ../{REMOTE_LOG}; exit ${{PIPESTATUS[0]}}")


def ship_checkout(cloud: Gcloud) -> None:
    """git archive of this checkout's HEAD, copied to every worker and installed there."""
    archive = f"/tmp/mim_jax_src_{cloud.args.name}.tar.gz"
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"], text=True,
                           capture_output=True).stdout.strip()
    if dirty:
        cloud.say("warning: uncommitted changes are not shipped (git archive HEAD); commit them first")
    if cloud.run(["git", "-C", REPO, "archive", "--format=tar.gz", f"--output={archive}", "HEAD"],
                 "this checkout's HEAD").returncode:
        raise SystemExit("[tpu_pod] git archive failed: run the launcher from a git checkout of mim_jax")
    scp = ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{cloud.args.name}:{REMOTE_ARCHIVE}",
           *cloud.where, "--worker=all"]
    if cloud.run(scp, "copy it to every worker").returncode:
        raise SystemExit("[tpu_pod] copying the checkout to the workers failed")
    if cloud.ssh_all(install_command(cloud.args.python), "install it on every worker"):
        raise SystemExit("[tpu_pod] installing on the workers failed")


def launch(args: argparse.Namespace, out=None, runner: Callable = subprocess.run,
           sleep: Callable[[float], None] = time.sleep) -> int:
    """Checks, then create-or-reuse, install and run, relaunching after preemptions; returns the exit status."""
    tpu, shape = check_args(args)
    cloud = Gcloud(args, out, runner)
    cloud.say(f"{tpu.accelerator_type}: {tpu.chips} chips on {tpu.hosts} host(s); mesh {describe_mesh(shape)}")
    command = pretrain_command(args.python, args.pretrain_args)
    for attempt in range(args.max_restarts + 1):
        state = cloud.vm_state()
        if state != "READY":
            cloud.create(tpu)
        ship_checkout(cloud)
        status = cloud.ssh_all(command, "pretrain on every worker at once (resumes from the workdir's checkpoint)")
        if args.dry_run or status == 0:
            if not args.dry_run:
                cloud.say("pretraining finished")
            return 0
        preempted = status == PREEMPTED_EXIT_CODE or cloud.vm_state() != "READY"
        if not preempted:
            cloud.say(f"pretraining failed with exit status {status} (not a preemption); not relaunching")
            return status
        cloud.say(f"preempted (exit {status}); relaunch {attempt + 1} of {args.max_restarts}")
        sleep(POLL_SECONDS)
    cloud.say(f"still preempted after {args.max_restarts} relaunches; re-run this command to resume")
    return PREEMPTED_EXIT_CODE


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status."""
    return run_launcher(parse_args, launch, argv)


if __name__ == "__main__":
    sys.exit(main())
