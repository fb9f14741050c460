"""Mesh shape resolution and the logical -> mesh rules."""
import jax
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from mim_jax import sharding


@pytest.mark.parametrize("shape,devices,expected", [
    ((-1, 1, 1), 8, (8, 1, 1)), ((1, -1, 2), 8, (1, 4, 2)), ((2, 2, 2), 8, (2, 2, 2)), ((-1, 1, 1), 1, (1, 1, 1)),
])
def test_resolve_mesh_shape(shape, devices, expected):
    assert sharding.resolve_mesh_shape(shape, devices) == expected


@pytest.mark.parametrize("shape,message", [
    ((2, 2, 1), "uses 4 devices but 8 are available"), ((-1, -1, 1), "at most one -1"),
    ((3, -1, 1), "not divisible by 3"), ((8, 1), "needs 3 entries"), ((0, 8, 1), "positive sizes"),
])
def test_bad_mesh_shapes(shape, message):
    with pytest.raises(ValueError, match=message):
        sharding.resolve_mesh_shape(shape, 8)


def test_batch_sharding_and_data_parallel_size():
    cfg = ml_collections.ConfigDict(dict(shape=(2, 2, 2), rules=sharding.DEFAULT_RULES))
    mesh, rules = sharding.make_mesh(cfg), sharding.logical_rules(cfg)
    assert sharding.data_parallel_size(mesh, rules) == 4
    assert sharding.batch_sharding(mesh, rules, 4).spec == P(("data", "fsdp"), None, None, None)
    assert len(jax.devices()) == 8
