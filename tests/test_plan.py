"""The memory plan compiles the real train step for TPU topologies with libtpu's compile-only devices."""
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mim_jax.cluster import plan
from mim_jax.config.defaults import base_config
from mim_jax.errors import ConfigError
from mim_jax.train.program import train_flops_per_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(mesh_shape, batch=16):
    """A 3.4M-parameter MAE whose dims are multiples of 128 (TPU tiles pad smaller minor dims)."""
    c = base_config()
    c.model.update(dict(variant="Ti/16", width=256, depth=2, heads=2, mlp_dim=1024, image_size=64, patch_size=16))
    c.mae.decoder.update(dict(width=256, depth=1, heads=2, mlp_ratio=2))
    c.data.global_batch_size = batch
    c.mesh.shape = mesh_shape
    return c


def state_bytes_per_device(config, topology):
    """Bytes of params + AdamW state one device holds: each leaf divided by the mesh axes it is split over."""
    from mim_jax.parallel.sharding import make_mesh
    from mim_jax.train.program import build_program
    mesh = make_mesh(config.mesh, plan.topology_devices(topology))
    program = build_program(config, mesh)
    total = 0
    for leaf in jax.tree.leaves(program.abstract_state):
        shards = math.prod(leaf.sharding.shard_shape(leaf.shape)) / max(math.prod(leaf.shape), 1)
        total += math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize * shards
    return total


@pytest.mark.slow
@pytest.mark.tpu_compile
@pytest.mark.parametrize("topology,mesh_shape", [("v5e:2x2", (2, 2, 1)), ("v5p:2x2x1", (1, 2, 2))])
def test_tiny_model_plans_and_fits(topology, mesh_shape):
    config = tiny_config(mesh_shape)
    topo = plan.parse_topology(topology)
    report = plan.plan(config, topo)
    assert report.devices == 4 and report.mesh == dict(zip(("data", "fsdp", "tensor"), mesh_shape))
    assert report.fits and report.hbm_per_device == topo.hbm_per_chip
    # Arguments are the sharded state plus this device's slice of the batch; TPU tiling pads small and
    # split dims a little (measured: +1% on (2,2,1), +11% on (1,4,1)).
    state = state_bytes_per_device(config, topo)
    assert state <= report.argument_bytes <= 1.15 * state + 256 * 1024
    # The state is donated: the new state reuses the old buffers; only the metrics are fresh outputs.
    assert report.alias_bytes >= state and report.output_bytes - report.alias_bytes < 16 * 1024
    assert report.model_flops_per_step == train_flops_per_step(config)
    # XLA's count of the unrolled loss + gradient (elementwise ops included) is within 10% of ours.
    assert abs(report.model_flops_per_step / report.xla_flops_per_step - 1) < 0.1
    assert report.xla_flops_per_device > 0


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.tpu_compile
def test_more_memory_than_allowed_exits_1_from_the_cli():
    cmd = [sys.executable, "-m", "mim_jax.plan", "--config=configs/demo.py", "--topology=v5e:2x2",
           "--config.data.global_batch_size=16", "--config.mesh.shape=(4,1,1)", "--max_hbm_fraction=1e-6"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "DOES NOT FIT" in proc.stdout and "of 16.00 GiB HBM" in proc.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
def test_unknown_topology_is_one_line_exit_2():
    cmd = [sys.executable, "-m", "mim_jax.plan", "--config=configs/demo.py", "--topology=v9:4x4"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --topology='v9:4x4' is not a TPU topology")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("text,message", [
    ("v9:4x4", r"generation in \['v4', 'v5e', 'v5p', 'v6e'\]"),
    ("v5p:4x4", r"v5p slices have 3 positive dimensions"),
    ("v5e", r"is not a TPU topology"),
    ("", r"is not a TPU topology"),
])
def test_bad_topology_names(text, message):
    with pytest.raises(ConfigError, match=message):
        plan.parse_topology(text)


def test_topology_chips_and_hbm():
    t = plan.parse_topology("v5p:8x8x4")
    assert (t.chips, t.hbm_per_chip, t.name) == (256, 95 * 2 ** 30, "v5p:8x8x4")
    assert plan.parse_topology("v5e:16x16").hbm_per_chip == 16 * 2 ** 30


@pytest.mark.tpu_compile
def test_mesh_that_does_not_match_the_topology():
    with pytest.raises(ConfigError, match=r"mesh.shape=\(8, 1, 1\) uses 8 devices but 4 are available"):
        plan.plan(tiny_config((8, 1, 1)), plan.parse_topology("v5e:2x2"))


def test_compiler_out_of_memory_message_is_parsed():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(133.21G) exceeds available HBM (95.74G).")
    assert plan.out_of_memory_bytes(message) == int(133.21 * 2 ** 30)
    assert plan.out_of_memory_bytes("INTERNAL: something else") is None


@pytest.mark.slow
@pytest.mark.tpu_compile
def test_xla_flops_of_a_teacher_objective_are_counted():
    """The frozen teacher's TPU-sharded abstract params must not move the CPU-side FLOP count to the TPU backend."""
    from mim_jax.config.recipes import load_module
    from mim_jax.parallel.sharding import make_mesh
    config = load_module(os.path.join(REPO, "configs", "pretrain.py")).get_config("model=B/16,target=clip")
    config.data.global_batch_size = 8
    mesh = make_mesh(config.mesh, plan.topology_devices(plan.parse_topology(config.plan.topology)))
    xla = plan.xla_train_flops(config, mesh)
    # Student forward + backward x3 and the teacher's forward x1 (MaxText convention) against XLA's count.
    assert abs(train_flops_per_step(config) / xla - 1) < 0.02
