"""Run N JAX processes on this machine as one multi-process run (fake CPU devices), e.g. to test multi-host code.

    python launch/local_multihost.py --num_processes=2 --devices_per_process=4 -- \\
        -m mim_jax.pretrain --config=configs/demo.py --workdir=workdirs/mp --config.total_steps=20

Everything after `--` is passed to this Python interpreter in every process. Each process gets
JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count=K and MIM_JAX_COORDINATOR_ADDRESS,
MIM_JAX_NUM_PROCESSES, MIM_JAX_PROCESS_ID (read by mim_jax.parallel.distributed.initialize). Output lines are
prefixed with [p<i>]. If one process fails, the others are stopped (SIGTERM, then SIGKILL after a grace
period). The exit status is 0 when all succeed, else the largest status among the processes that failed on
their own (a signal N counts as 128+N).

SIGTERM or SIGUSR1 sent to the launcher is forwarded to every process, as a cluster's preemption notice
would reach them: pretraining saves a checkpoint at the next step and exits 75, which the launcher waits
for (up to --preempt_grace_s) and returns. A process exiting 75 does not stop the others. SIGINT / SIGHUP
stop everything at once (exit 130).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence, TextIO

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
PREEMPTED_EXIT_CODE = 75  # mim_jax.train.preemption.PREEMPTED_EXIT_CODE: saved a checkpoint, not a failure
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_pending_signal: list[int] = []  # set by the signal handler, consumed by run()


def free_port(host: str = "localhost") -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def xla_flags(devices_per_process: int, existing: str = "") -> str:
    """`existing` XLA flags without any device-count flag, plus the fake CPU device count."""
    kept = [f for f in existing.split() if not f.startswith(DEVICE_COUNT_FLAG)]
    return " ".join(kept + [f"{DEVICE_COUNT_FLAG}={devices_per_process}"])


def process_env(process_id: int, num_processes: int, devices_per_process: int, port: int,
                base: Optional[dict] = None) -> dict:
    """The variables process `process_id` gets on top of `base` (default: this process's environment)."""
    base = dict(os.environ if base is None else base)
    return {"JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": xla_flags(devices_per_process, base.get("XLA_FLAGS", "")),
            "MIM_JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "MIM_JAX_NUM_PROCESSES": str(num_processes),
            "MIM_JAX_PROCESS_ID": str(process_id),
            "PYTHONUNBUFFERED": "1"}


def commands(args: Sequence[str], num_processes: int, devices_per_process: int, port: int,
             python: str = sys.executable) -> list[tuple[list[str], dict]]:
    """(argv, extra env) of every process."""
    return [([python, *args], process_env(i, num_processes, devices_per_process, port))
            for i in range(num_processes)]


def format_command(argv: Sequence[str], env: dict) -> str:
    """The shell line that runs `argv` with `env` set."""
    return " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(a) for a in argv])


def exit_status(returncode: int) -> int:
    """Popen returncode -> shell-style exit status (killed by signal N -> 128+N)."""
    return 128 - returncode if returncode < 0 else returncode


def _pump(prefix: str, stream: TextIO, out: TextIO, lock: threading.Lock) -> None:
    """Copy `stream` to `out` line by line, each line prefixed."""
    for line in iter(stream.readline, ""):
        with lock:
            out.write(f"{prefix}{line if line.endswith(chr(10)) else line + chr(10)}")
            out.flush()
    stream.close()


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to `proc` and the process group it leads (its own session: only what it started)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def stop_all(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM every running process, then SIGKILL those still alive after `grace_s` seconds."""
    running = [p for p in procs if p.poll() is None]
    for p in running:
        _kill_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in running:
        if p.poll() is None:
            _kill_group(p, signal.SIGKILL)
        p.wait()


def forward_pending_signal(procs: Sequence[subprocess.Popen], out: TextIO, lock: threading.Lock) -> bool:
    """Send a signal the launcher received (SIGTERM / SIGUSR1) to every running process; True if there was one."""
    if not _pending_signal:
        return False
    sig = _pending_signal.pop()
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    with lock:
        out.write(f"[launch] forwarded {signal.Signals(sig).name} to the processes; waiting for them to exit\n")
        out.flush()
    return True


def run(args: Sequence[str], num_processes: int, devices_per_process: int, *, port: Optional[int] = None,
        cwd: Optional[str] = None, timeout_s: Optional[float] = None, grace_s: float = 5.0,
        preempt_grace_s: float = 300.0, out: TextIO = sys.stdout) -> int:
    """Start the processes, stream their prefixed output, wait; returns the run's exit status."""
    port = port or free_port()
    procs, pumps, lock = [], [], threading.Lock()
    killed_by_us: set[int] = set()
    failed: list[int] = []
    start = time.monotonic()
    try:
        for i, (argv, extra) in enumerate(commands(args, num_processes, devices_per_process, port)):
            proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **extra}, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                                    start_new_session=True)
            procs.append(proc)
            pump = threading.Thread(target=_pump, args=(f"[p{i}] ", proc.stdout, out, lock), daemon=True)
            pump.start()
            pumps.append(pump)
        while any(p.poll() is None for p in procs):
            if forward_pending_signal(procs, out, lock):
                timeout_s = min(timeout_s or float("inf"), time.monotonic() - start + preempt_grace_s)
            failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0, PREEMPTED_EXIT_CODE)]
            timed_out = timeout_s is not None and time.monotonic() - start > timeout_s
            if failed or timed_out:
                killed_by_us = {i for i, p in enumerate(procs) if p.poll() is None}
                with lock:
                    why = f"process {failed[0]} exited with {exit_status(procs[failed[0]].returncode)}" if failed \
                        else f"timeout after {timeout_s:.0f}s"
                    out.write(f"[launch] {why}; stopping processes {sorted(killed_by_us)}\n")
                    out.flush()
                stop_all(procs, grace_s)
                break
            time.sleep(0.05)
    except BaseException:
        stop_all(procs, grace_s)
        raise
    finally:
        for pump in pumps:
            pump.join(timeout=5)
    statuses = [exit_status(p.returncode) for p in procs]
    own = [s for i, s in enumerate(statuses) if i not in killed_by_us]
    worst = max(own, default=0)
    if worst == 0 and killed_by_us:  # stopped on timeout: report the signal we sent
        worst = max(statuses)
    return worst


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Launcher options before `--`; the arguments after it go in `.command`."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     usage="%(prog)s [options] -- <python args, e.g. -m mim_jax.pretrain ...>")
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=4)
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0 = pick a free one)")
    parser.add_argument("--timeout_s", type=float, default=0, help="stop all processes after this long (0 = never)")
    parser.add_argument("--grace_s", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--preempt_grace_s", type=float, default=300.0,
                        help="after a forwarded SIGTERM / SIGUSR1: how long the processes get to save and exit")
    parser.add_argument("--dry_run", action="store_true", help="print the commands and environment, run nothing")
    args = parser.parse_args(argv[:split])
    args.command = argv[split + 1:]
    if not args.command:
        parser.error("nothing to run: put the python arguments after --, e.g. -- -m mim_jax.pretrain ...")
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be >= 1")
    return args


def _interrupt(signum: int, frame) -> None:
    """SIGHUP handler: unwind like Ctrl-C so that run() stops the processes it started."""
    raise KeyboardInterrupt(f"signal {signum}")


def _forward_later(signum: int, frame) -> None:
    """SIGTERM / SIGUSR1 handler: run() forwards the signal to the processes (a preemption notice)."""
    _pending_signal.append(signum)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    port = args.port or free_port()
    if args.dry_run:
        for argv_i, env in commands(args.command, args.num_processes, args.devices_per_process, port):
            print(format_command(argv_i, env))
        return 0
    handlers = {signal.SIGHUP: _interrupt, **{sig: _forward_later for sig in FORWARDED_SIGNALS}}
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        return run(args.command, args.num_processes, args.devices_per_process, port=port,
                   timeout_s=args.timeout_s or None, grace_s=args.grace_s, preempt_grace_s=args.preempt_grace_s)
    except KeyboardInterrupt:
        print("[launch] interrupted; all processes stopped", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _pending_signal.clear()


if __name__ == "__main__":
    sys.exit(main())
