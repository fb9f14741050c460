"""XLA:CPU's thread pool is sized for the fake devices (mim_jax/xla_cpu_threads.py, docs/testing.md)."""
import os

import jax
import pytest

from mim_jax import xla_cpu_threads


def test_pool_threads():
    assert xla_cpu_threads.pool_threads(8, 2) == 32
    assert xla_cpu_threads.pool_threads(4, 2) == 16
    assert xla_cpu_threads.pool_threads(2, 16) == 16  # never fewer than the cores
    assert xla_cpu_threads.pool_threads(512, 2) == 256  # XLA's cap


def test_configure_sets_nproc_only_for_fake_devices(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2 --xla_force_host_platform_device_count=8"}
    xla_cpu_threads.configure(env)
    assert env["NPROC"] == "32"  # the last device-count flag wins, as in XLA
    assert env["XLA_FLAGS"].endswith(" --xla_cpu_enable_concurrency_optimized_scheduler=false")
    before = dict(env)
    xla_cpu_threads.configure(env)
    assert env == before  # idempotent

    accelerator = {"XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true"}
    xla_cpu_threads.configure(accelerator)
    assert "NPROC" not in accelerator  # no fake CPU devices: GPU / TPU runs keep XLA's pools
    jax_flag = {"JAX_NUM_CPU_DEVICES": "4"}
    xla_cpu_threads.configure(jax_flag)
    assert jax_flag["NPROC"] == "16"
    user = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "NPROC": "12"}
    xla_cpu_threads.configure(user)
    assert user["NPROC"] == "12"  # a value set by the user is kept


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc (Linux)")
def test_this_process_has_the_sized_pool():
    """conftest imports mim_jax before jax starts, so the suite's 8 devices run on NPROC pool threads."""
    assert len(jax.devices()) == 8
    jax.block_until_ready(jax.jit(lambda x: x + 1)(1))  # the CPU client and its pool exist
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    expected = min(int(os.environ["NPROC"]), xla_cpu_threads.MAX_INTRA_OP_THREADS)
    assert expected >= 4 * 8
    assert sum(name.endswith("XLAEigen") for name in names) == expected
