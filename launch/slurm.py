"""Submit pretraining to a SLURM GPU cluster: N nodes x G GPUs, one JAX process per GPU, requeued on preemption.

    python launch/slurm.py --nodes=2 --gpus_per_node=8 [--partition=P] [--account=A] [--time=24:00:00]
        [--dry_run] -- --config=configs/pretrain.py:model=L/16 --workdir=/shared/runs/mae-l16 [--config.x=v ...]

Everything after `--` is what `python -m mim_jax.pretrain` gets in every task. Before anything is
submitted, the config is loaded with those overrides and its mesh and global batch are checked against the
job (devices = nodes x GPUs, one process per GPU); a mismatch fails in one line. The job body is
launch/slurm.sbatch: `srun` starts one process per GPU, jax.distributed reads the SLURM environment, and
`--signal=USR1@<signal_seconds>` before the time limit (or SIGTERM on preemption) makes the run save at the
next step and exit 75, upon which the job requeues itself (`--requeue`) and resumes from the workdir.
Submitting the same command again later also resumes. The workdir must be on storage all nodes share.
`--dry_run` prints the sbatch command and what each task runs, and submits nothing.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from typing import Callable, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mim_jax.cluster.launch_check import check_job, describe_mesh, load_pretrain_config, pretrain_flag, \
    run_launcher, split_at_dashes  # noqa: E402
from mim_jax.errors import ConfigError  # noqa: E402

JOB_BODY = os.path.join(REPO, "launch", "slurm.sbatch")
TIME_RE = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Launcher options before `--`; the pretraining arguments after it go in `.pretrain_args`."""
    own, pretrain_args = split_at_dashes(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     usage="%(prog)s --nodes=N --gpus_per_node=G [options] -- --config=... "
                                           "--workdir=DIR")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus_per_node", type=int, default=8)
    parser.add_argument("--cpus_per_task", type=int, default=12, help="CPU cores per process (input pipeline)")
    parser.add_argument("--partition", default="")
    parser.add_argument("--account", default="")
    parser.add_argument("--time", default="24:00:00", help="time limit per job run ([D-]HH:MM:SS)")
    parser.add_argument("--signal_seconds", type=int, default=300,
                        help="SIGUSR1 this many seconds before the time limit (preemption checkpoint)")
    parser.add_argument("--job_name", default="", help="default: mim_jax-<workdir name>")
    parser.add_argument("--dry_run", action="store_true", help="print the commands, submit nothing")
    args = parser.parse_args(own)
    args.pretrain_args = pretrain_args
    return args


def check_args(args: argparse.Namespace) -> tuple[tuple[int, ...], str]:
    """All checks before submitting: job shape vs config, time format, workdir -> (mesh shape, abs workdir)."""
    if args.nodes < 1 or args.gpus_per_node < 1 or args.cpus_per_task < 1:
        raise ConfigError(f"--nodes={args.nodes}, --gpus_per_node={args.gpus_per_node} and --cpus_per_task="
                          f"{args.cpus_per_task} must all be >= 1")
    if not TIME_RE.match(args.time):
        raise ConfigError(f"--time={args.time!r}: use SLURM's [D-]HH:MM:SS, e.g. --time=24:00:00")
    if args.signal_seconds < 30:
        raise ConfigError(f"--signal_seconds={args.signal_seconds}: leave at least 30 s to save a checkpoint")
    config = load_pretrain_config(args.pretrain_args)
    gpus = args.nodes * args.gpus_per_node
    shape = check_job(config, gpus, gpus, f"--nodes={args.nodes} x --gpus_per_node={args.gpus_per_node}")
    workdir = pretrain_flag(args.pretrain_args, "workdir")
    if not workdir:
        raise ConfigError("no --workdir among the pretraining arguments after `--`; use a directory on storage "
                          "every node shares, e.g. --workdir=/shared/runs/NAME")
    return shape, workdir if "://" in workdir else os.path.abspath(workdir)


def with_workdir(pretrain_args: Sequence[str], workdir: str) -> list[str]:
    """The pretraining arguments with --workdir made absolute (tasks may start in another directory)."""
    return [f"--workdir={workdir}" if a.startswith("--workdir=") else a for a in pretrain_args]


def sbatch_command(args: argparse.Namespace, workdir: str) -> list[str]:
    """The sbatch command line: job shape, requeue, pre-timeout signal, log file in the workdir."""
    name = args.job_name or f"mim_jax-{os.path.basename(workdir.rstrip('/')) or 'run'}"
    argv = ["sbatch", f"--job-name={name}", f"--nodes={args.nodes}", f"--ntasks-per-node={args.gpus_per_node}",
            f"--gpus-per-node={args.gpus_per_node}", f"--cpus-per-task={args.cpus_per_task}", f"--time={args.time}",
            "--requeue", f"--signal=USR1@{args.signal_seconds}", "--open-mode=append",
            f"--output={workdir}/slurm-%j.out"]
    argv += [f"--partition={args.partition}"] if args.partition else []
    argv += [f"--account={args.account}"] if args.account else []
    return argv + [JOB_BODY, *with_workdir(args.pretrain_args, workdir)]


def submit(args: argparse.Namespace, out=None, runner: Callable = subprocess.run) -> int:
    """Check, then submit (or print) the job; returns the exit status."""
    shape, workdir = check_args(args)
    out = out or sys.stdout
    tasks = args.nodes * args.gpus_per_node
    print(f"[slurm] {args.nodes} node(s) x {args.gpus_per_node} GPUs = {tasks} processes, one per GPU; "
          f"mesh {describe_mesh(shape)}; workdir {workdir}", file=out)
    argv = sbatch_command(args, workdir)
    print(f"# submit (re-submitting the same command resumes from {workdir})\n{shlex.join(argv)}", file=out)
    task = shlex.join(["srun", "--kill-on-bad-exit=1", "python3", "-m", "mim_jax.pretrain",
                       *with_workdir(args.pretrain_args, workdir)])
    print(f"# inside the job, each of the {tasks} tasks (SLURM_PROCID 0..{tasks - 1}) runs:\n{task}", file=out)
    if args.dry_run:
        return 0
    if "://" not in workdir:
        os.makedirs(workdir, exist_ok=True)  # sbatch opens the log file there
    result = runner(argv, text=True, capture_output=True)
    print(result.stdout.strip() or result.stderr.strip(), file=out)
    return result.returncode


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status."""
    return run_launcher(parse_args, submit, argv)


if __name__ == "__main__":
    sys.exit(main())
