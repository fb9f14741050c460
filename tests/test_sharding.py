"""Mesh shape resolution and the logical -> mesh rules."""
import jax
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from mim_jax.parallel import sharding

pytestmark = pytest.mark.fake_devices  # meshes over the 8 fake CPU devices


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


def tiny_model_config(mesh_shape):
    from mim_jax.config.defaults import base_config
    c = base_config()
    c.model.update(dict(variant="Ti/16", width=32, depth=2, heads=2, mlp_dim=64, image_size=32, patch_size=8))
    c.mae.decoder.update(dict(width=16, depth=1, heads=2, mlp_ratio=2))
    c.data.global_batch_size = 8
    c.mesh.shape = mesh_shape
    return c


def abstract_params(mesh_shape):
    from mim_jax.objectives.mae import build_mae, init_inputs
    from mim_jax.train import optim
    from mim_jax.train.state import abstract_train_state
    c = tiny_model_config(mesh_shape)
    mesh, rules = sharding.make_mesh(c.mesh), sharding.logical_rules(c.mesh)
    model = build_mae(c)
    abstract, shardings = abstract_train_state(model, init_inputs(model, c), optim.make_optimizer(c.optim, 8, 10),
                                               mesh, rules)
    return abstract.params, shardings.params, mesh


def test_replicated_bytes_counts_unsplit_parameters():
    params, shardings, mesh = abstract_params((1, 8, 1))
    replicated, total, largest = sharding.replicated_bytes(params, shardings, mesh)
    flat = dict(sharding._leaf_paths(params))
    assert total == 4 * sum(x.size for x in jax.tree.leaves(params))
    # Under the default rules on an fsdp-only mesh, the parameters without an 'embed' axis stay whole:
    # q/k/v biases (heads, head_dim), MLP fc1 biases (mlp), the decoder embed bias and mask token
    # (decoder_embed) and the prediction bias (patch).
    suffixes = ("query/bias", "key/bias", "value/bias", "fc1/bias", "decoder/embed/bias", "mask_token", "pred/bias")
    expected = [p for p in flat if p.endswith(suffixes)]
    assert set(largest) <= set(expected) and len(expected) == 11
    assert replicated == 4 * sum(flat[p].size for p in expected)
    assert 0 < replicated / total < 0.1


def test_replication_check_fails_with_a_named_field():
    params, shardings, mesh = abstract_params((1, 8, 1))
    fraction = sharding.check_replication(params, shardings, mesh, max_fraction=0.5)
    with pytest.raises(sharding.ConfigError, match=r"mesh.max_replicated_fraction=0.0\d+: \d.\d% of parameter "
                                                    r"bytes stay replicated on an fsdp=8 mesh \(largest: "):
        sharding.check_replication(params, shardings, mesh, max_fraction=fraction / 2)
    # Without an fsdp axis nothing is expected to be split: no check.
    params, shardings, mesh = abstract_params((8, 1, 1))
    assert sharding.check_replication(params, shardings, mesh, max_fraction=0.0) == 1.0


def test_indivisible_parameter_names_path_and_sizes():
    params, shardings, mesh = abstract_params((1, 1, 8))  # 2 heads over tensor=8
    with pytest.raises(sharding.ConfigError, match=r"mesh.shape=\(1, 1, 8\): parameter \S+/attn/\S+ \(1, 2, 8\) dim 1 "
                                                    r"\(size 2\) does not split over mesh axes tensor=8; use sizes "
                                                    r"whose product divides 2 \(one of \[1, 2\]\)"):
        sharding.check_divisible(params, shardings, mesh)


def test_batch_layout_errors_name_the_field():
    cfg = ml_collections.ConfigDict(dict(shape=(4, 2, 1), rules=sharding.DEFAULT_RULES))
    mesh, rules = sharding.make_mesh(cfg), sharding.logical_rules(cfg)
    sharding.check_batch_layout(32, 4, mesh, rules, 2)
    with pytest.raises(sharding.ConfigError, match=r"data.global_batch_size=12 .* use a multiple of 8"):
        sharding.check_batch_layout(12, 1, mesh, rules, 1)
    with pytest.raises(sharding.ConfigError, match=r"grad_accum_steps=4 .* use a multiple of 32"):
        sharding.check_batch_layout(16, 4, mesh, rules, 1)
