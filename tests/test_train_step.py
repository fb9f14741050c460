"""The jitted train step gives the same loss and params on 1 device and on 8 fake devices in several meshes."""
import os

import jax
import ml_collections
import numpy as np
import optax
import pytest

from mim_jax import optim
from mim_jax.configuration import base_config
from mim_jax.models.mae import mae_from_config
from mim_jax.sharding import global_batch, logical_rules, make_mesh
from mim_jax.train_step import create_train_state, make_train_step, mask_noise

BATCH = 8


def tiny_config():
    c = base_config()
    c.model.update(dict(variant="Ti/16", width=32, depth=2, heads=2, mlp_dim=64, image_size=32, patch_size=8,
                        dtype="float32"))
    c.model.decoder.update(dict(width=16, depth=1, heads=2, mlp_ratio=2))
    c.optim.update(dict(base_lr=3e-2, warmup_steps=1))
    c.data.global_batch_size = BATCH
    return c


def run_steps(mesh_shape, devices, num_steps=3, sgd=False):
    c = tiny_config()
    mesh_cfg = ml_collections.ConfigDict(dict(shape=mesh_shape, rules=c.mesh.rules))
    mesh, rules = make_mesh(mesh_cfg, devices), logical_rules(mesh_cfg)
    model = mae_from_config(c.model)
    # SGD keeps updates linear in the gradients, so parameter differences show gradient differences
    # directly; Adam would amplify reduction-order noise on near-zero gradients to a full lr step.
    tx = optax.sgd(0.5) if sgd else optim.make_optimizer(c.optim, BATCH, 10)
    state, shardings = create_train_state(model, tx, mesh, rules, seed=0)
    step = make_train_step(model, optim.learning_rate_schedule(c.optim, BATCH, 10), 0, True, mesh, rules,
                           shardings, BATCH)
    rng = np.random.default_rng(0)
    local = {"image": rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8),
             "label": rng.integers(0, 10, (BATCH,), dtype=np.int32)}
    losses = []
    for _ in range(num_steps):  # the same images each step (masks differ): the loss must go down
        state, metrics = step(state, global_batch(local, mesh, rules))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params)


@pytest.fixture(scope="module")
def single_device_runs():
    return {sgd: run_steps((1, 1, 1), jax.devices()[:1], sgd=sgd) for sgd in (False, True)}


# Meshes that shard parameters (fsdp/tensor > 1) mix all-gathers and all-reduces in one step; on fake
# XLA:CPU devices those can still dead-lock intermittently (devices reach them in different orders; see
# README "Notes for developers"), which aborts the whole test process. They run when asked for with
# MIM_JAX_FSDP_FAKE_DEVICE_TESTS=1 (they passed repeatedly one by one); CI runs the data-parallel mesh.
PARAM_SHARDED = pytest.mark.skipif(os.environ.get("MIM_JAX_FSDP_FAKE_DEVICE_TESTS") != "1",
                                   reason="XLA:CPU fake-device collective-order dead-lock; opt in with "
                                          "MIM_JAX_FSDP_FAKE_DEVICE_TESTS=1")


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), pytest.param((1, 8, 1), marks=PARAM_SHARDED),
                                        pytest.param((2, 2, 2), marks=PARAM_SHARDED),
                                        pytest.param((1, 4, 2), marks=PARAM_SHARDED)])
def test_same_losses_and_params_on_any_mesh(single_device_runs, mesh_shape):
    assert len(jax.devices()) == 8
    ref_losses, _ = single_device_runs[False]
    losses, _ = run_steps(mesh_shape, jax.devices())
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert ref_losses[-1] < ref_losses[0]
    sgd_losses, sgd_params = run_steps(mesh_shape, jax.devices(), sgd=True)
    np.testing.assert_allclose(sgd_losses, single_device_runs[True][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), sgd_params,
                 single_device_runs[True][1])


def test_params_are_sharded_as_the_rules_say():
    c = tiny_config()
    mesh_cfg = ml_collections.ConfigDict(dict(shape=(1, 4, 2), rules=c.mesh.rules))
    mesh, rules = make_mesh(mesh_cfg), logical_rules(mesh_cfg)
    model = mae_from_config(c.model)
    state, _ = create_train_state(model, optim.make_optimizer(c.optim, BATCH, 10), mesh, rules, seed=0)
    fc1 = state.params["encoder"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"]  # (layers, embed, mlp)
    assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    mu = state.opt_state[0].mu["encoder"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"]
    assert mu.sharding.spec == fc1.sharding.spec


def test_mask_noise_depends_on_seed_and_step_only():
    a = np.asarray(mask_noise(0, 5, (4, 16)))
    np.testing.assert_array_equal(a, np.asarray(mask_noise(0, 5, (4, 16))))
    assert not np.array_equal(a, np.asarray(mask_noise(0, 6, (4, 16))))
    assert not np.array_equal(a, np.asarray(mask_noise(1, 5, (4, 16))))
