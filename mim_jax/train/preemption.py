"""Preemption: SIGTERM / SIGUSR1 ask the loop to checkpoint at the next step boundary and exit 75.

Launch scripts rely on this contract:
- SIGTERM (TPU maintenance, SLURM preemption, `kill`) or SIGUSR1 (e.g. `sbatch --signal=USR1@120`) requests a
  preemption checkpoint; every process of a multi-process run saves at the same step (it is enough that one
  process receives the signal), waits for the save to finish, process 0 prints
  "Preempted: saved checkpoint step N; re-run the same command to resume", and each exits with
  PREEMPTED_EXIT_CODE (75, sysexits EX_TEMPFAIL: "try again"). Re-running the same command resumes.
- In a multi-process run the agreement is jax's preemption sync point
  (`multihost_utils.reached_preemption_sync_point`, the coordination service's protocol: the step after
  the largest step any process had reached when the notice arrived). Its notifier listens to SIGTERM, so
  SIGUSR1 is forwarded to SIGTERM. In a single-process run a Python handler sets a flag.
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator

import jax
from jax.experimental import multihost_utils

PREEMPTED_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, re-run to continue
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_requested = False


class Preempted(Exception):
    """The run saved a preemption checkpoint at `step` and must exit with PREEMPTED_EXIT_CODE."""

    def __init__(self, step: int):
        super().__init__(f"Preempted: saved checkpoint step {step}; re-run the same command to resume")
        self.step = step


def _request(signum: int, frame) -> None:
    global _requested
    _requested = True


def _forward_to_sigterm(signum: int, frame) -> None:
    os.kill(os.getpid(), signal.SIGTERM)  # jax's preemption notifier (C++) listens to SIGTERM only


def _multi_process() -> bool:
    return jax.process_count() > 1


@contextlib.contextmanager
def watch() -> Iterator[None]:
    """Install the preemption signal handlers for the duration of the train loop (main thread only)."""
    global _requested
    _requested = False
    if _multi_process():  # SIGTERM stays with jax's notifier, installed by jax.distributed.initialize()
        handlers = {signal.SIGUSR1: _forward_to_sigterm}
    else:
        handlers = {sig: _request for sig in PREEMPTION_SIGNALS}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def reached_preemption(step: int) -> bool:
    """True on every process at the same step once any process got a preemption signal; call every step."""
    if _multi_process():
        return multihost_utils.reached_preemption_sync_point(step)
    return _requested
