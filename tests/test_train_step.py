"""The jitted train step gives the same loss and params on 1 device and on 8 fake devices in several meshes."""
import jax
import ml_collections
import numpy as np
import optax
import pytest

from mim_jax.config.defaults import base_config
from mim_jax.objectives import mae
from mim_jax.objectives.mae import build_mae, init_inputs
from mim_jax.parallel.sharding import global_batch, logical_rules, make_mesh
from mim_jax.train import optim
from mim_jax.train.state import create_train_state
from mim_jax.train.step import make_train_step, step_key

BATCH = 8


def tiny_config():
    c = base_config()
    c.model.update(dict(variant="Ti/16", width=32, depth=2, heads=2, mlp_dim=64, image_size=32, patch_size=8,
                        dtype="float32"))
    c.mae.decoder.update(dict(width=16, depth=1, heads=2, mlp_ratio=2))
    c.optim.update(dict(base_lr=3e-2, warmup_steps=1))
    c.data.global_batch_size = BATCH
    return c


def run_steps(mesh_shape, devices, num_steps=3, sgd=False, micro_batches=1):
    c = tiny_config()
    mesh_cfg = ml_collections.ConfigDict(dict(shape=mesh_shape, rules=c.mesh.rules))
    mesh, rules = make_mesh(mesh_cfg, devices), logical_rules(mesh_cfg)
    model = build_mae(c)
    # SGD keeps updates linear in the gradients, so parameter differences show gradient differences
    # directly; Adam would amplify reduction-order noise on near-zero gradients to a full lr step.
    tx = optax.sgd(0.5) if sgd else optim.make_optimizer(c.optim, BATCH, 10)
    state, shardings = create_train_state(model, init_inputs(model, c), tx, mesh, rules, seed=0)
    c.optim.grad_accum_steps = micro_batches
    step = make_train_step(mae.OBJECTIVE, model, c, optim.learning_rate_schedule(c.optim, BATCH, 10), mesh, rules,
                           shardings)
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


def check_against_single_device(single_device_runs, adam_losses, sgd_losses, sgd_params):
    ref_losses, _ = single_device_runs[False]
    np.testing.assert_allclose(adam_losses, ref_losses, rtol=1e-5)
    assert ref_losses[-1] < ref_losses[0]
    np.testing.assert_allclose(sgd_losses, single_device_runs[True][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), sgd_params,
                 single_device_runs[True][1])


@pytest.mark.slow
@pytest.mark.fake_devices
def test_same_losses_and_params_data_parallel(single_device_runs):
    assert len(jax.devices()) == 8
    adam_losses, _ = run_steps((8, 1, 1), jax.devices())
    sgd_losses, sgd_params = run_steps((8, 1, 1), jax.devices(), sgd=True)
    check_against_single_device(single_device_runs, adam_losses, sgd_losses, sgd_params)


@pytest.mark.slow
@pytest.mark.fake_devices  # the (2, 1, 1) case
@pytest.mark.parametrize("mesh_shape,num_devices", [((1, 1, 1), 1), ((2, 1, 1), 2)])
def test_gradient_accumulation_equals_full_batch(single_device_runs, mesh_shape, num_devices):
    """4 micro-batches of B/4 inside the step give the update of one step on B (fp32 tolerance)."""
    devices = jax.devices()[:num_devices]
    adam_losses, _ = run_steps(mesh_shape, devices, micro_batches=4)
    sgd_losses, sgd_params = run_steps(mesh_shape, devices, sgd=True, micro_batches=4)
    check_against_single_device(single_device_runs, adam_losses, sgd_losses, sgd_params)


def test_micro_batches_are_strided_rows():
    from mim_jax.train.step import split_micro_batches
    x = np.arange(12 * 2).reshape(12, 2)
    parts = np.asarray(split_micro_batches(x, 4))
    assert parts.shape == (4, 3, 2)
    np.testing.assert_array_equal(parts[1], x[1::4])
    np.testing.assert_array_equal(np.sort(parts.reshape(-1, 2), axis=0), x)


@pytest.mark.slow
@pytest.mark.fake_devices
# Meshes that shard parameters (FSDP and tensor axes) mix all-gathers, reduce-scatters and all-reduces in one
# step. They run in this process like any other mesh: the XLA:CPU thread-pool starvation that used to abort them
# now and then is prevented by mim_jax.xla_cpu_threads (docs/testing.md), so no retry hides an abort.
@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2), (1, 4, 2)])
def test_same_losses_and_params_param_sharded(single_device_runs, mesh_shape):
    adam_losses, _ = run_steps(mesh_shape, jax.devices())
    sgd_losses, sgd_params = run_steps(mesh_shape, jax.devices(), sgd=True)
    check_against_single_device(single_device_runs, adam_losses, sgd_losses, sgd_params)


@pytest.mark.slow
@pytest.mark.fake_devices
def test_params_are_sharded_as_the_rules_say():
    c = tiny_config()
    mesh_cfg = ml_collections.ConfigDict(dict(shape=(1, 4, 2), rules=c.mesh.rules))
    mesh, rules = make_mesh(mesh_cfg), logical_rules(mesh_cfg)
    model = build_mae(c)
    state, _ = create_train_state(model, init_inputs(model, c), optim.make_optimizer(c.optim, BATCH, 10), mesh, rules,
                                  seed=0)
    fc1 = state.params["encoder"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"]  # (layers, embed, mlp)
    assert fc1.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    mu = state.opt_state[0].mu["encoder"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"]
    assert mu.sharding.spec == fc1.sharding.spec


def test_step_randomness_depends_on_seed_and_step_only():
    model = build_mae(tiny_config())
    noise = lambda seed, step: np.asarray(mae.sample_noise(model, None, step_key(seed, step), 4)["noise"])
    a = noise(0, 5)
    assert a.shape == (4, 16)
    np.testing.assert_array_equal(a, noise(0, 5))
    np.testing.assert_array_equal(a, np.asarray(jax.random.uniform(jax.random.fold_in(jax.random.key(0), 5), (4, 16))))
    assert not np.array_equal(a, noise(0, 6))
    assert not np.array_equal(a, noise(1, 5))


@pytest.mark.slow
def test_bfloat16_compute_keeps_fp32_params_optimizer_and_loss():
    """model.dtype=bfloat16: matmuls in bf16; params, AdamW moments and the loss stay float32."""
    from mim_jax.train.program import build_program
    losses = {}
    for dtype in ("float32", "bfloat16"):
        c = tiny_config()
        c.model.dtype = dtype
        c.mesh.shape = (1, 1, 1)
        mesh = make_mesh(c.mesh, jax.devices()[:1])
        program = build_program(c, mesh)
        state, _ = program.init_state(0)
        rng = np.random.default_rng(0)
        local = {"image": rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8),
                 "label": np.zeros((BATCH,), np.int32)}
        state, metrics = program.step(state, global_batch(local, mesh, program.rules))
        assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype("float32")}
        assert {x.dtype for x in jax.tree.leaves(state.opt_state[0].mu)} == {np.dtype("float32")}
        assert metrics["loss"].dtype == np.float32
        losses[dtype] = float(metrics["loss"])
    # bf16 has an 8-bit mantissa: the loss agrees to about 1%, not to fp32 precision.
    assert losses["bfloat16"] != losses["float32"]
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=2e-2)
