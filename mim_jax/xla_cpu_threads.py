"""XLA:CPU thread pool sized for fake CPU devices, so their collectives cannot starve it (see docs/testing.md).

With `--xla_force_host_platform_device_count=N` all N fake devices run on one XLA:CPU intra-op thread pool of
max(cores, N) threads. A collective (all-gather, all-reduce, ...) blocks the pool thread that runs it until every
device of its group has reached it, and XLA:CPU starts a device's next collective as soon as its inputs are ready,
without waiting for the previous one to finish. Once every pool thread is blocked in a collective, the devices
that have not yet joined those collectives have no thread to run on: nothing moves, and the rendezvous aborts
the process ("Termination timeout for ...") after 40 s. No timeout fixes that; more threads than collectives
that can be waiting at once does.

The pool size is read by XLA from the NPROC environment variable when the CPU client is created (the first jax
computation), so `configure()` runs on `import mim_jax`, before jax touches a backend. It only acts when fake CPU
devices are asked for (device count > 1): GPU and TPU runs never see it. An NPROC already set is kept.
"""
from __future__ import annotations

import os
import re
from typing import MutableMapping

# Pool threads per fake device: 4 (32 threads for 8 devices) never aborted where XLA's default of 1 per device
# aborted every cold run measured, and costs no measurable step time; 32 per device (the 256-thread cap) made
# steps ~20% slower on 2 cores. Measurements in docs/testing.md.
THREADS_PER_DEVICE = 4
MAX_INTRA_OP_THREADS = 256  # XLA:CPU's cap on its intra-op pool (kMaxIntraOpThreads)

# Kept from the earlier fix (it does not prevent the starvation above, docs/testing.md): the default CPU
# scheduler keeps each device's program close to the HLO order, the one the measurements were made with.
SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def fake_device_count(environ: MutableMapping[str, str]) -> int:
    """The number of CPU devices asked for by XLA_FLAGS or JAX_NUM_CPU_DEVICES (1 when neither asks)."""
    counts = re.findall(r"--xla_force_host_platform_device_count=(\d+)", environ.get("XLA_FLAGS", ""))
    count = int(counts[-1]) if counts else 1  # XLA takes the last occurrence of a flag
    jax_count = environ.get("JAX_NUM_CPU_DEVICES", "")
    if jax_count.strip().lstrip("-").isdigit() and int(jax_count) > 1:
        count = int(jax_count)
    return count


def pool_threads(num_devices: int, cpu_count: int) -> int:
    """XLA:CPU intra-op threads for `num_devices` fake devices on `cpu_count` cores."""
    return min(MAX_INTRA_OP_THREADS, max(cpu_count, THREADS_PER_DEVICE * num_devices))


def configure(environ: MutableMapping[str, str] = os.environ) -> None:
    """Add the CPU scheduler flag and, with fake CPU devices, size XLA:CPU's pool (NPROC). Idempotent."""
    flags = environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        environ["XLA_FLAGS"] = (flags + " " + SCHEDULER_FLAG).strip()
    devices = fake_device_count(environ)
    if devices > 1 and "NPROC" not in environ:
        environ["NPROC"] = str(pool_threads(devices, os.cpu_count() or 1))
