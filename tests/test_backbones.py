"""The backbone registry and SimMIM on SwinV2 through it: recipes and planned slices, FLOPs vs the formula and vs
XLA's count, mesh equivalence on 8 fake devices, exact resume after SIGKILL, config errors naming the field, global
pooling without CLS, SimMIM's Swin layer ids for lr decay, fine-tuning at a new window."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import assert_sigkill_resume_reproduces, tiny_pretrain_config
from mim_jax.cluster.plan import xla_train_flops
from mim_jax.config.cli import load_config_file
from mim_jax.errors import ConfigError
from mim_jax.evaluate import finetune as ft
from mim_jax.evaluate.features import pool_tokens
from mim_jax.models import backbones, swinv2
from mim_jax.objectives import registry, simmim
from mim_jax.parallel.sharding import global_batch, logical_rules, make_mesh
from mim_jax.train import optim
from mim_jax.train.program import train_flops_per_step
from mim_jax.train.state import create_train_state
from mim_jax.train.step import make_train_step

BATCH = 8


def swin_config(dataset_dir="", **kw):
    """SimMIM on swinv2_cpu (width 32, depths 2-2-2-2, window 4) at 32 px: grids 8, 4, 2, 1; 16-px mask cells."""
    c = tiny_pretrain_config(dataset_dir, objective="simmim", **kw)
    c.model.update({"family": "swinv2", "variant": "swinv2_cpu", "width": 0, "depth": 0, "heads": 0, "mlp_dim": 0,
                    "patch_size": 0, "window_size": 4, "image_size": 32})
    return c


def test_registry_picks_the_family_and_its_geometry():
    c = load_config_file("configs/simmim.py:model=swinv2_b,recipe=xie")
    b = backbones.get(c.model)
    assert (b.name, b.prefix_tokens, b.patch_size(c.model), b.output_stride(c.model), b.output_width(c.model)) == \
        ("swinv2", 0, 4, 32, 1024)
    vit_cfg = load_config_file("configs/simmim.py:model=B/16,recipe=xie")
    v = backbones.get(vit_cfg.model)
    assert (v.name, v.prefix_tokens, v.output_stride(vit_cfg.model), v.output_width(vit_cfg.model)) == \
        ("vit", 1, 16, 768)
    assert backbones.count_params(c.model) == pytest.approx(87e6, rel=0.01)


@pytest.mark.parametrize("variant,topology", [("swinv2_s", "v5p:2x2x1"), ("swinv2_b", "v5p:2x2x1"),
                                              ("swinv2_l", "v5p:2x2x2"), ("swinv2_h", "v5p:2x2x4"),
                                              ("swinv2_g", "v5p:2x2x4")])
def test_swin_recipes_follow_simmim(variant, topology):
    """192 px, window 12, patch 4, 32-px mask cells at ratio 0.6, stride 32; xie: window-normalized targets."""
    c = load_config_file(f"configs/simmim.py:model={variant},recipe=xie")
    registry.validate(c, check_data_path=False)
    assert (c.model.family, c.model.image_size, c.model.window_size, c.data.global_batch_size) == \
        ("swinv2", 192, 12, 2048)
    assert (c.simmim.mask_patch_size, c.simmim.mask_ratio, c.simmim.norm_target_window) == (32, 0.6, 47)
    assert c.plan.topology == topology
    model = simmim.build_model(c)
    assert (model.encoder.patch_size, model.encoder.output_stride, model.encoder.grid_size) == (4, 32, 48)


def test_swin_flops_follow_the_formula():
    """SwinV2-S at 192 px, window 12: per stage 4 C^2 + 8 C^2 per token, windowed attention 4 T w^2 C, merging."""
    c = load_config_file("configs/simmim.py:model=swinv2_s,recipe=xie")
    fwd = 2 * 48 * 48 * 96 * 48
    for i, (depth, grid, window) in enumerate(zip((2, 2, 18, 2), (48, 24, 12, 6), (12, 12, 12, 6))):
        ch, t = 96 * 2 ** i, grid * grid
        fwd += depth * (2 * t * ch * ch * 12 + 4 * t * window * window * ch)
        if i < 3:
            fwd += 2 * (t // 4) * 4 * ch * 2 * ch
    fwd += 2 * 36 * 768 * 32 * 32 * 3  # head on the 6 x 6 output tokens
    assert simmim.flops_per_example(c) == 3 * fwd
    assert train_flops_per_step(c) == 2048 * 3 * fwd


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["swinv2_s", "swinv2_g"])
def test_swin_flops_within_5_percent_of_xla(variant):
    """Ours (MaxText convention) vs XLA's count of the unrolled loss + grad (elementwise ops included), batch 8."""
    c = load_config_file(f"configs/simmim.py:model={variant},recipe=xie")
    c.data.global_batch_size = 8
    ours, xla = train_flops_per_step(c), xla_train_flops(c, None)
    assert 0.95 < ours / xla <= 1.0


@pytest.mark.parametrize("field,value,message", [
    ("image_size", 40, "model.image_size=40: stage 1's 10x10 grid is not divisible by model.window_size=4"),
    ("image_size", 30, "model.image_size=30: must be a positive multiple of the patch size 4"),
    ("heads", 3, "model.heads: stage 1 has width 32 (model.width=32 x 1) and 3 heads"),
    ("variant", "B/16", "model.variant='B/16': model.family='swinv2' takes one of"),
    ("family", "convnext", "model.family='convnext' is not a registered backbone; use one of ['swinv2', 'vit']"),
    ("depth", 12, "model.depth=12: model.family='swinv2' takes its depths from model.variant"),
])
def test_bad_swin_input_names_the_field(field, value, message):
    c = swin_config()
    c.model[field] = value
    with pytest.raises(ConfigError) as err:
        registry.validate(c, check_data_path=False)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- through the generic step


# Two stages (grids 8 and 4 at 32 px, window 4): shifted windows with the -100 mask in stage 1, the whole-grid
# unshifted rule in stage 2, PatchMerging between them; a quarter of swinv2_cpu's compile time on 8 fake devices.
MESH_TEST_SIZE = swinv2.SwinV2Size(16, (2, 2), (2, 4), window_size=4)  # heads split over tensor=2


def run_steps(mesh_shape, devices, num_steps=3):
    """SGD losses, final and initial params of `num_steps` SimMIM-on-SwinV2 steps (drop path on: it draws from the step key)."""
    c = swin_config()
    c.model.variant = "swinv2_mesh_test"
    c.simmim.mask_patch_size = 16  # a multiple of the 2-stage encoder's stride 8
    c.data.global_batch_size = BATCH
    c.model.drop_path = 0.1
    c.simmim.norm_target_window = 5
    mesh_cfg = ml_collections.ConfigDict({"shape": mesh_shape, "rules": c.mesh.rules})
    mesh, rules = make_mesh(mesh_cfg, devices), logical_rules(mesh_cfg)
    model = simmim.build_model(c)
    state, shardings = create_train_state(model, simmim.init_inputs(model, c), optax.sgd(0.05), mesh, rules, seed=0)
    initial = jax.device_get(state.params)
    step = make_train_step(simmim.OBJECTIVE, model, c, optim.learning_rate_schedule(c.optim, BATCH, 10), mesh,
                           rules, shardings)
    rng = np.random.default_rng(0)
    local = {"image": rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8),
             "label": np.zeros((BATCH,), np.int32)}
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, global_batch(local, mesh, rules))
        losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state.params), initial


@pytest.fixture(scope="module")
def mesh_test_size():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(swinv2.SWINV2_SIZES, "swinv2_mesh_test", MESH_TEST_SIZE)
        yield


@pytest.fixture(scope="module")
def reference_run(mesh_test_size):
    return run_steps((1, 1, 1), jax.devices()[:1])


@pytest.mark.slow
@pytest.mark.fake_devices
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2)])
def test_swin_meshes_equal_one_device(reference_run, mesh_shape):
    """Data-parallel, FSDP and mixed meshes over the 8 fake devices give the 1-device losses and params."""
    losses, params, _ = run_steps(mesh_shape, jax.devices())
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), reference_run[1], reference_run[2]))
    assert max(moved) > 1e-3  # the steps change the params: their equality below is not that of the init
    np.testing.assert_allclose(losses, reference_run[0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, reference_run[1])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_swin_sigkill_resume_reproduces_the_uninterrupted_losses(tiny_dataset, tmp_path):
    """A SimMIM-on-SwinV2 run killed between checkpoints and re-run logs every step with the uninterrupted losses."""
    config = swin_config(tiny_dataset, total_steps=16)
    config.model.drop_path = 0.1
    config.ckpt.every_steps = 5
    config.evals.linear_probe.at_end = False
    assert_sigkill_resume_reproduces(config, tmp_path)


# --------------------------------------------------------------------------- evaluation without CLS


def test_without_cls_both_pools_average_all_tokens():
    tokens = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 3)), jnp.float32)
    for pool in ("cls", "mean"):
        np.testing.assert_allclose(pool_tokens(tokens, pool, prefix_tokens=0), tokens.mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(pool_tokens(tokens, "cls", prefix_tokens=1), tokens[:, 0])


def swin_s_classifier(image_size=192, window=12):
    s = swinv2.SWINV2_SIZES["swinv2_s"]
    encoder = swinv2.SwinV2Encoder(s.embed_dim, s.depths, s.heads, 192, window_size=12)
    model = ft.classifier_for(encoder, 1000, drop_path=0.1, image_size=image_size, window_size=window)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
    return model, jax.tree.map(lambda x: getattr(x, "value", x), params["params"], is_leaf=lambda x: hasattr(x, "names"))


def test_swin_layer_decay_follows_simmim_get_swin_layer():
    """SimMIM (utils.get_swin_layer): num_layers = sum(depths) + 2 = 26; scale = decay ** (num_layers - 1 - id)."""
    model, params = swin_s_classifier()
    scales = optim.encoder_layer_decay_scales(params, model.encoder, 0.9)
    formula = lambda layer_id: 0.9 ** (26 - 1 - layer_id)
    enc = scales["encoder"]
    for leaf in jax.tree.leaves(enc["patch_embed"]) + jax.tree.leaves(enc["patch_norm"]):
        assert float(leaf) == pytest.approx(formula(0), rel=1e-6)
    # stage 3 (index 2) holds blocks 4 .. 21: ids 5 .. 22; its merging id sum(depths[:3]) = 22
    for leaf in jax.tree.leaves(enc["stage2_blocks"]):
        np.testing.assert_allclose(np.asarray(leaf).ravel(), [formula(4 + j + 1) for j in range(18)], rtol=1e-6)
    for leaf in jax.tree.leaves(enc["stage2_merge"]):
        assert float(leaf) == pytest.approx(formula(22), rel=1e-6)
    assert float(enc["stage0_merge"]["norm"]["scale"]) == pytest.approx(formula(2), rel=1e-6)
    for leaf in jax.tree.leaves(scales["head"]) + jax.tree.leaves(scales["fc_norm"]):
        assert float(leaf) == pytest.approx(formula(25), rel=1e-6)


def test_finetune_at_224_window_14_keeps_the_192_window_12_weights():
    """The classifier at 224 px / window 14 has the same parameter shapes and normalizes its CPB by (12, 12, 12, 6)."""
    model, params = swin_s_classifier(224, 14)
    _, params_192 = swin_s_classifier(192, 12)
    assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(lambda x: x.shape, params_192)
    enc = model.encoder
    assert (enc.image_size, enc.window_size, enc.pretrained_window_sizes) == (224, 14, (12, 12, 12, 6))
    assert [w for _, w, _ in enc.geometry()] == [14, 14, 14, 7]


@pytest.mark.slow
def test_finetune_runs_at_a_new_image_and_window_size(tiny_dataset):
    """A 32 px / window 2 SimMIM-SwinV2 encoder fine-tuned at 64 px / window 4 (CPB scaled by (2, 2, 2, 1))."""
    from mim_jax.config.defaults import finetune_config
    from mim_jax.evaluate.evaluators import EvalContext
    c = swin_config(tiny_dataset)
    c.model.window_size = 2
    model = simmim.build_model(c)
    mesh_cfg = ml_collections.ConfigDict({"shape": (8, 1, 1), "rules": c.mesh.rules})
    mesh, rules = make_mesh(mesh_cfg, jax.devices()), logical_rules(mesh_cfg)
    state, _ = create_train_state(model, simmim.init_inputs(model, c), optax.sgd(0.1), mesh, rules, seed=0)
    ctx = EvalContext(model, state.params, tiny_dataset, "train", "val", mesh, rules, 0)
    e = finetune_config("Ti/16")
    e.update({"epochs": 2, "warmup_epochs": 1, "batch_size": 16, "eval_batch_size": 8, "auto_augment": "",
              "image_size": 64, "window_size": 4})
    result = ft.finetune_encoder(ctx, e)
    assert result["num_val"] == 40 and result["steps"] == 2 * (96 // 16)
    assert np.isfinite(result["final_train_loss"]) and 0.0 <= result["top1"] <= result["top5"] <= 1.0
    encoder = ft.classifier_for(model.encoder, 10, 0.1, 64, 4).encoder
    assert encoder.pretrained_window_sizes == (2, 2, 2, 1) and [w for _, w, _ in encoder.geometry()] == [4, 4, 4, 2]
