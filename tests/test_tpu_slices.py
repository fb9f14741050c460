"""TPU accelerator types -> chips, hosts, runtime images; plan topologies -> accelerator types."""
import pytest

from mim_jax.cluster.tpu_slices import parse_accelerator_type, slice_for_topology
from mim_jax.errors import ConfigError


@pytest.mark.parametrize("name, chips, hosts, runtime", [
    ("v5p-8", 4, 1, "v2-alpha-tpuv5"),
    ("v5p-16", 8, 2, "v2-alpha-tpuv5"),
    ("v5p-256", 128, 32, "v2-alpha-tpuv5"),
    ("v4-32", 16, 4, "tpu-ubuntu2204-base"),
    ("v5litepod-8", 8, 1, "v2-alpha-tpuv5-lite"),
    ("v5litepod-16", 16, 4, "v2-alpha-tpuv5-lite"),
    ("v6e-256", 256, 64, "v2-alpha-tpuv6e"),
])
def test_accelerator_types(name, chips, hosts, runtime):
    tpu = parse_accelerator_type(name)
    assert (tpu.chips, tpu.hosts, tpu.devices) == (chips, hosts, chips)
    assert tpu.generation.runtime_version == runtime
    assert tpu.accelerator_type == name  # round trip


@pytest.mark.parametrize("topology, accelerator_type, hosts", [
    ("v5p:2x2x1", "v5p-8", 1), ("v5p:4x4x8", "v5p-256", 32), ("v5e:4x4", "v5litepod-16", 4),
    ("v4:2x2x4", "v4-32", 4), ("v6e:16x16", "v6e-256", 64),
])
def test_plan_topologies_map_to_accelerator_types(topology, accelerator_type, hosts):
    tpu = slice_for_topology(topology)
    assert (tpu.accelerator_type, tpu.hosts) == (accelerator_type, hosts)


@pytest.mark.parametrize("name, message", [
    ("v7x-16", "is not a TPU accelerator type"),
    ("v5p-15", "use a multiple of 2"),
    ("v5litepod-10", "multiple of 4"),
    ("", "is not a TPU accelerator type"),
])
def test_bad_accelerator_types_name_the_flag(name, message):
    with pytest.raises(ConfigError, match="--accelerator_type") as err:
        parse_accelerator_type(name)
    assert message in str(err.value)


def test_missing_topology_says_what_to_pass():
    with pytest.raises(ConfigError, match="pass --accelerator_type"):
        slice_for_topology("")
