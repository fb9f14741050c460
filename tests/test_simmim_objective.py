"""SimMIM through the generic train step: mesh equivalence, exact resume after SIGKILL, config errors, recipes."""
import os

import jax
import ml_collections
import numpy as np
import optax
import pytest

from conftest import assert_sigkill_resume_reproduces, tiny_pretrain_config
from mim_jax.config.cli import load_config_file
from mim_jax.errors import ConfigError
from mim_jax.objectives import registry, simmim
from mim_jax.parallel.sharding import global_batch, logical_rules, make_mesh
from mim_jax.train import optim
from mim_jax.train.program import train_flops_per_step
from mim_jax.train.state import create_train_state
from mim_jax.train.step import make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 8


def step_config():
    c = tiny_pretrain_config("", objective="simmim")
    c.model.update(dict(depth=2, image_size=32))
    c.data.global_batch_size = BATCH
    c.optim.update(dict(base_lr=3e-2, warmup_steps=1))
    c.simmim.norm_target_window = 5
    return c


def run_steps(mesh_shape, devices, sgd, num_steps=3):
    """Losses and final params of `num_steps` SimMIM steps on the same images (masks differ per step)."""
    c = step_config()
    mesh_cfg = ml_collections.ConfigDict(dict(shape=mesh_shape, rules=c.mesh.rules))
    mesh, rules = make_mesh(mesh_cfg, devices), logical_rules(mesh_cfg)
    model = simmim.build_model(c)
    # SGD keeps the updates linear in the gradients (see test_train_step); AdamW checks the losses.
    tx = optax.sgd(0.5) if sgd else optim.make_optimizer(c.optim, BATCH, 10)
    state, shardings = create_train_state(model, simmim.init_inputs(model, c), tx, mesh, rules, seed=0)
    step = make_train_step(simmim.OBJECTIVE, model, c, optim.learning_rate_schedule(c.optim, BATCH, 10), mesh,
                           rules, shardings)
    rng = np.random.default_rng(0)
    local = {"image": rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8),
             "label": np.zeros((BATCH,), np.int32)}
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, global_batch(local, mesh, rules))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params)


@pytest.fixture(scope="module")
def reference_runs():
    return {sgd: run_steps((1, 1, 1), jax.devices()[:1], sgd) for sgd in (False, True)}


def check_same(reference_runs, adam, sgd, params):
    np.testing.assert_allclose(adam, reference_runs[False][0], rtol=1e-5)
    assert reference_runs[False][0][-1] < reference_runs[False][0][0]
    np.testing.assert_allclose(sgd, reference_runs[True][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params, reference_runs[True][1])


@pytest.mark.slow
@pytest.mark.fake_devices
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2)])
def test_meshes_equal_one_device(reference_runs, mesh_shape):
    """Data-parallel, FSDP and mixed meshes over the 8 fake devices give the 1-device losses and params."""
    adam, _ = run_steps(mesh_shape, jax.devices(), sgd=False)
    sgd, params = run_steps(mesh_shape, jax.devices(), sgd=True)
    check_same(reference_runs, adam, sgd, params)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sigkill_resume_reproduces_the_uninterrupted_losses(tiny_dataset, tmp_path):
    """A SimMIM run killed between checkpoints and re-run logs every step with the uninterrupted run's loss."""
    config = tiny_pretrain_config(tiny_dataset, total_steps=16, objective="simmim")
    config.model.drop_path = 0.1  # drop path draws from the step key too: resume must replay it
    config.ckpt.every_steps = 5
    config.evals.linear_probe.at_end = False
    assert_sigkill_resume_reproduces(config, tmp_path)


@pytest.mark.parametrize("field,value,message", [
    ("simmim.mask_patch_size", 12, "simmim.mask_patch_size=12 must be a positive multiple of the model's patch size 8"),
    ("simmim.mask_patch_size", 24, "simmim.mask_patch_size=24 must divide the image size 32"),
    ("simmim.mask_ratio", 1.0, "simmim.mask_ratio=1.0 must lie in (0, 1)"),
    ("simmim.norm_target_window", 4, "simmim.norm_target_window=4 must be 0 (off) or an odd window size"),
    ("objective", "beit", "objective='beit' is not registered; use one of ['mae', 'mae_teacher', 'simmim', 'wsp']"),
    ("mae.mask_ratio", 0.5, "mae.mask_ratio=0.5 is set, but objective='simmim' does not read the 'mae' block"),
])
def test_bad_input_names_the_field_and_the_fix(field, value, message):
    c = tiny_pretrain_config("", objective="simmim")
    block, name = field.split(".") if "." in field else (None, field)
    (c[block] if block else c)[name] = value
    with pytest.raises(ConfigError) as err:
        registry.validate(c, check_data_path=False)
    assert message in str(err.value)


def test_mae_refuses_a_simmim_field():
    c = tiny_pretrain_config("")
    c.simmim.mask_ratio = 0.5
    with pytest.raises(ConfigError, match=r"simmim.mask_ratio=0.5 is set, but objective='mae' does not read the "
                                          r"'simmim' block \(objective simmim does\)"):
        registry.validate(c, check_data_path=False)


def test_recipes_follow_the_papers():
    """configs/simmim.py: Xie et al. Table 1 and SimMIM's ViT-B recipe; /14 sizes get 28-px cells or a refusal."""
    xie = load_config_file("configs/simmim.py:model=L/16,recipe=xie,steps=250000")
    registry.validate(xie, check_data_path=False)
    assert (xie.objective, xie.model.image_size, xie.total_steps, xie.data.global_batch_size) == \
        ("simmim", 192, 250_000, 2048)
    assert (xie.simmim.mask_patch_size, xie.simmim.mask_ratio, xie.simmim.norm_target_window) == (32, 0.6, 47)
    lr = optim.learning_rate_schedule(xie.optim, 2048, xie.total_steps)
    assert float(lr(6250)) == pytest.approx(4e-4) and float(lr(218_749)) == pytest.approx(4e-4)
    assert float(lr(218_750)) == pytest.approx(4e-5)  # x0.1 for the last 1/8
    assert (xie.optim.b1, xie.optim.b2, xie.optim.weight_decay, xie.optim.grad_clip_norm) == (0.9, 0.999, 0.05, 5.0)
    assert (xie.model.drop_path, tuple(xie.data.crop_scale), xie.optim.warmup_steps) == (0.1, (0.67, 1.0), 6250)
    assert xie.plan.topology == "v5p:2x2x2"
    paper = load_config_file("configs/simmim.py:model=H/14")
    registry.validate(paper, check_data_path=False)
    assert (paper.model.image_size, paper.simmim.mask_patch_size, paper.simmim.norm_target_window) == (224, 28, 0)
    with pytest.raises(ValueError, match="patch 14 does not divide recipe=xie's 192 px"):
        load_config_file("configs/simmim.py:model=H/14,recipe=xie")
    with pytest.raises(ValueError, match="recipe=xie takes one of"):
        load_config_file("configs/simmim.py:model=B/16,steps=1000")


def test_flops_count_the_encoder_on_all_tokens_and_the_head():
    """ViT-B/16 at 192 px: 145 tokens through 12 blocks, the patch embedding on 144, the head 768 -> 768 on 144."""
    c = load_config_file("configs/simmim.py:model=B/16,recipe=xie")
    s, d, m = 145, 768, 3072
    forward = 2 * 144 * 768 * d + 12 * (2 * (4 * d * d + 2 * d * m) * s + 4 * s * s * d) + 2 * 144 * d * 768
    assert simmim.flops_per_example(c) == 3 * forward
    assert train_flops_per_step(c) == 2048 * 3 * forward
