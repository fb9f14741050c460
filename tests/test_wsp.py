"""WSP (MAWS) objective: soft-target CE vs float64 numpy, the step on meshes, MAE->WSP init, resume, bad input."""
import json
import os

import jax
import ml_collections
import numpy as np
import optax
import pytest

from conftest import (
    assert_sigkill_resume_reproduces,
    make_run_dir,
    tiny_pretrain_config,
)
from mim_jax.errors import ConfigError
from mim_jax.models.heads import padded_classes
from mim_jax.models.vit import sincos_2d
from mim_jax.objectives import registry, wsp
from mim_jax.parallel.sharding import global_batch, logical_rules, make_mesh
from mim_jax.train import optim
from mim_jax.train.program import build_program
from mim_jax.train.resume import start_state
from mim_jax.train.state import create_train_state
from mim_jax.train.step import make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, CLASSES, MAX_LABELS = 8, 10, 3


def numpy_wsp_loss(logits, labels, num_classes, eps):
    """float64 reference: per row, t = set / |set| (smoothed), CE = -sum t log softmax; mean over non-empty rows."""
    logits = np.asarray(logits, np.float64)[:, :num_classes]
    total, rows = 0.0, 0
    for z, ids in zip(logits, np.asarray(labels)):
        ids = sorted({int(i) for i in ids if 0 <= i < num_classes})
        if not ids:
            continue
        t = np.zeros(num_classes)
        t[ids] = 1.0 / len(ids)
        t = (1 - eps) * t + eps / num_classes
        log_p = z - z.max() - np.log(np.exp(z - z.max()).sum())
        total, rows = total - (t * log_p).sum(), rows + 1
    return total / max(rows, 1), rows


LABEL_SETS = np.array([[3, -1, -1], [1, 4, 7], [2, 2, 5], [-1, -1, -1], [9, 0, -1], [6, -1, -1]], np.int32)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_soft_target_cross_entropy_matches_float64_numpy(eps):
    """Padded ids, a duplicate id (counted once), an empty set (left out of the mean), padded logit columns."""
    logits = np.random.default_rng(0).normal(size=(6, padded_classes(CLASSES))).astype(np.float32) * 3
    value, rows = wsp.soft_target_cross_entropy(logits, LABEL_SETS, CLASSES, eps)
    ref, ref_rows = numpy_wsp_loss(logits, LABEL_SETS, CLASSES, eps)
    assert float(rows) == ref_rows == 5
    np.testing.assert_allclose(float(value), ref, rtol=1e-6)


def test_empty_batch_gives_zero_loss_and_zero_gradient():
    empty = np.full((4, 2), -1, np.int32)
    logits = np.random.default_rng(1).normal(size=(4, 128)).astype(np.float32)
    value, grad = jax.value_and_grad(lambda z: wsp.soft_target_cross_entropy(z, empty, CLASSES, 0.1)[0])(logits)
    assert float(value) == 0.0 and not np.any(np.asarray(grad))


def test_single_label_batches_are_one_element_sets():
    logits = np.random.default_rng(2).normal(size=(3, 128)).astype(np.float32)
    label = np.array([4, 0, 9], np.int32)
    as_sets = wsp.label_sets({"label": label})
    np.testing.assert_array_equal(as_sets, label[:, None])
    value, _ = wsp.soft_target_cross_entropy(logits, as_sets, CLASSES)
    ref = -np.mean([np.log(np.exp(z[:CLASSES].astype(np.float64)) / np.exp(z[:CLASSES]).sum())[y]
                    for z, y in zip(logits, label)])
    np.testing.assert_allclose(float(value), ref, rtol=1e-6)


def numpy_mixed_wsp_loss(logits, labels, num_classes, eps, lam, perm):
    """float64 reference of mixup: T_i = smoothed set / |set| (0 for an empty set), t_i = lam T_i + (1 - lam)
    T_perm(i), loss = sum_i -t_i . log softmax(z_i) / (number of labelled rows)."""
    logits = np.asarray(logits, np.float64)[:, :num_classes]
    dists = np.zeros((len(labels), num_classes))
    for row, ids in enumerate(np.asarray(labels)):
        ids = sorted({int(i) for i in ids if 0 <= i < num_classes})
        if ids:
            dists[row, ids] = 1.0 / len(ids)
            dists[row] = (1 - eps) * dists[row] + eps / num_classes
    targets = lam * dists + (1 - lam) * dists[np.asarray(perm)]
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    labelled = int((dists.sum(1) > 0).sum())
    return -(targets * log_p).sum() / labelled, labelled


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_mixed_soft_target_cross_entropy_matches_float64_numpy(eps):
    """lam = 0.3 and a fixed permutation that pairs the empty set (row 3) with a labelled row and vice versa."""
    logits = np.random.default_rng(3).normal(size=(6, padded_classes(CLASSES))).astype(np.float32) * 3
    lam, perm = np.float32(0.3), np.array([3, 0, 5, 1, 2, 4], np.int32)
    value, rows = wsp.soft_target_cross_entropy(logits, LABEL_SETS, CLASSES, eps, (lam, perm))
    ref, ref_rows = numpy_mixed_wsp_loss(logits, LABEL_SETS, CLASSES, eps, 0.3, perm)
    assert float(rows) == ref_rows == 5
    np.testing.assert_allclose(float(value), ref, rtol=1e-6)
    np.testing.assert_allclose(float(wsp.soft_target_cross_entropy(logits, LABEL_SETS, CLASSES, eps,
                                                                   (np.float32(1.0), perm))[0]),
                               numpy_wsp_loss(logits, LABEL_SETS, CLASSES, eps)[0], rtol=1e-6)


def wsp_config(dataset="", **kw):
    c = tiny_pretrain_config(dataset, objective="wsp", **kw)
    c.wsp.num_classes = CLASSES
    c.data.max_labels = MAX_LABELS
    return c


def test_model_has_a_padded_class_head_with_logical_axes():
    c = wsp_config()
    program = build_program(c, make_mesh(c.mesh, jax.devices()[:1]))
    head = program.abstract_state.params["head"]
    assert head["pre_logits"]["kernel"].shape == (32, 32) and head["out"]["kernel"].shape == (32, 128)
    assert program.abstract_state.params["encoder"]["pos_embed"].shape == (1 + 16, 32)
    c.wsp.pos_embed = "sincos"
    assert "pos_embed" not in build_program(c, make_mesh(c.mesh, jax.devices()[:1])).abstract_state.params["encoder"]


def test_mixed_loss_at_lam_one_equals_the_unmixed_loss_and_images_mix_linearly():
    c = wsp_config()
    c.data.global_batch_size = 6
    model = wsp.build_model(c)
    params = model.init(jax.random.key(0), *wsp.init_inputs(model, c))["params"]
    rng = np.random.default_rng(4)
    batch = {"image": rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), "label": np.zeros(6, np.int32),
             "labels": LABEL_SETS}
    perm = np.array([5, 4, 3, 2, 1, 0], np.int32)
    loss = wsp.make_loss(model, c)
    plain = float(loss(params, batch, None)[0])
    mixed_one = float(loss(params, {**batch, "mix_lam": np.ones(6, np.float32), "mix_perm": perm}, None)[0])
    assert mixed_one == pytest.approx(plain, rel=1e-6)
    x = rng.normal(size=(6, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(wsp.mix_images(x, np.float32(0.25), perm), 0.25 * x + 0.75 * x[perm], rtol=1e-6)
    # lam < 1: the loss sees the mixed images (the model applied to them) and the mixed targets
    lam = np.float32(0.25)
    logits = model.apply({"params": params}, wsp.mix_images(wsp.normalize(batch["image"]), lam, perm))
    ref, _ = numpy_mixed_wsp_loss(logits, LABEL_SETS, CLASSES, 0.0, 0.25, perm)
    mixed = float(loss(params, {**batch, "mix_lam": np.full(6, lam), "mix_perm": perm}, None)[0])
    assert mixed == pytest.approx(ref, rel=1e-5)


def mixup_config(alpha=0.5, prob=1.0, accum=1):
    c = wsp_config()
    c.wsp.mixup, c.wsp.mixup_prob = alpha, prob
    c.optim.grad_accum_steps = accum
    return c


def test_sample_draws_one_beta_lambda_and_a_global_permutation():
    """Same (seed, step) -> same draws; lam's mean and variance over 4000 steps against Beta(a, a):
    1/2 and 1 / (4 (2a + 1)); mixup_prob = 0 gives lam = 1; alpha = 0 draws nothing."""
    c = mixup_config(alpha=0.5)
    draw = jax.jit(lambda step: wsp.sample(None, c, jax.random.fold_in(jax.random.key(0), step), 16))
    first, again, other = draw(7), draw(7), draw(8)
    np.testing.assert_array_equal(first["mix_perm"], again["mix_perm"])
    assert float(first["mix_lam"][0]) == float(again["mix_lam"][0]) != float(other["mix_lam"][0])
    assert np.all(np.asarray(first["mix_lam"]) == first["mix_lam"][0])  # one lambda per batch (timm 'batch')
    assert sorted(np.asarray(first["mix_perm"]).tolist()) == list(range(16))
    lams = np.asarray(jax.vmap(lambda s: draw(s)["mix_lam"][0])(np.arange(4000)), np.float64)
    assert abs(lams.mean() - 0.5) < 0.02 and abs(lams.var() - 1 / (4 * 2.0)) < 0.01
    off = jax.jit(lambda k: wsp.sample(None, mixup_config(prob=0.0), k, 16))(jax.random.key(1))
    assert np.all(np.asarray(off["mix_lam"]) == 1.0)
    assert wsp.sample(None, mixup_config(alpha=0.0), jax.random.key(1), 16) == {}


def test_with_grad_accumulation_partners_stay_in_the_micro_batch():
    """train.step splits rows a, a + A, ...: every micro-batch's partner indices are a permutation of its rows."""
    from mim_jax.train.step import split_micro_batches
    draws = wsp.sample(None, mixup_config(accum=4), jax.random.key(2), 16)
    for micro in np.asarray(split_micro_batches(draws["mix_perm"], 4)):
        assert sorted(micro.tolist()) == list(range(4))


@pytest.mark.fake_devices
def test_sample_is_the_same_on_one_and_eight_devices():
    """The draws over the global batch, computed on an (8,1,1) mesh with batch-sharded outputs, equal 1 device."""
    from jax.sharding import NamedSharding, PartitionSpec
    c = mixup_config()
    key = jax.random.fold_in(jax.random.key(0), 3)
    one = jax.jit(lambda k: wsp.sample(None, c, k, BATCH))(key)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("data",))
    out = NamedSharding(mesh, PartitionSpec("data"))
    eight = jax.jit(lambda k: wsp.sample(None, c, k, BATCH), out_shardings={"mix_lam": out, "mix_perm": out})(key)
    assert len(eight["mix_perm"].sharding.device_set) == 8
    for name in one:
        np.testing.assert_array_equal(np.asarray(one[name]), np.asarray(eight[name]))


def run_steps(mesh_shape, devices, sgd, num_steps=3, mixup=0.0):
    """Losses and final params of `num_steps` WSP steps (label sets with padding and an empty set)."""
    c = wsp_config()
    c.model.update(dict(depth=2))
    c.data.global_batch_size = BATCH
    c.optim.update(dict(base_lr=3e-2, warmup_steps=1))
    c.wsp.label_smoothing = 0.1
    c.wsp.mixup = mixup
    mesh_cfg = ml_collections.ConfigDict(dict(shape=mesh_shape, rules=c.mesh.rules))
    mesh, rules = make_mesh(mesh_cfg, devices), logical_rules(mesh_cfg)
    model = wsp.build_model(c)
    tx = optax.sgd(0.5) if sgd else optim.make_optimizer(c.optim, BATCH, 10)
    state, shardings = create_train_state(model, wsp.init_inputs(model, c), tx, mesh, rules, seed=0)
    step = make_train_step(wsp.OBJECTIVE, model, c, optim.learning_rate_schedule(c.optim, BATCH, 10), mesh, rules,
                           shardings)
    rng = np.random.default_rng(0)
    local = {"image": rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8),
             "label": np.zeros((BATCH,), np.int32),
             "labels": np.concatenate([LABEL_SETS, [[8, 1, -1], [5, -1, -1]]]).astype(np.int32)}
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, global_batch(local, mesh, rules))
        losses.append(float(metrics["loss"]))
        assert float(metrics["labelled"]) == 7
    return losses, jax.device_get(state.params), shardings


@pytest.fixture(scope="module")
def reference_runs():
    return {sgd: run_steps((1, 1, 1), jax.devices()[:1], sgd) for sgd in (False, True)}


@pytest.mark.slow
@pytest.mark.fake_devices
@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (2, 2, 2)])
def test_class_sharded_head_equals_one_device(reference_runs, mesh_shape):
    """FSDP and mixed meshes (the head's classes split over 'tensor', its input over 'fsdp') give the 1-device
    losses (AdamW) and params (SGD)."""
    adam, _, shardings = run_steps(mesh_shape, jax.devices(), sgd=False)
    sgd, params, _ = run_steps(mesh_shape, jax.devices(), sgd=True)
    spec = shardings.params["head"]["out"]["kernel"].spec
    assert tuple(spec) == ("fsdp", "tensor")
    np.testing.assert_allclose(adam, reference_runs[False][0], rtol=1e-5)
    assert reference_runs[False][0][-1] < reference_runs[False][0][0]
    np.testing.assert_allclose(sgd, reference_runs[True][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), params,
                 reference_runs[True][1])


@pytest.mark.slow
@pytest.mark.fake_devices
def test_mixup_step_on_a_mesh_equals_one_device():
    """Mixup's permutation gathers images and label sets across the batch-sharded devices: the (2,2,2) mesh gives
    the 1-device AdamW losses, and they differ from the unmixed run's."""
    one = run_steps((1, 1, 1), jax.devices()[:1], sgd=False, mixup=0.5)[0]
    mesh = run_steps((2, 2, 2), jax.devices(), sgd=False, mixup=0.5)[0]
    np.testing.assert_allclose(mesh, one, rtol=1e-5)
    plain = run_steps((1, 1, 1), jax.devices()[:1], sgd=False)[0]
    assert abs(one[0] - plain[0]) > 1e-3


@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    """An MAE run dir (same encoder size, fixed sin-cos positions) with one checkpoint."""
    run_dir = str(tmp_path_factory.mktemp("mae") / "run")
    c = tiny_pretrain_config("")
    return run_dir, make_run_dir(run_dir, c, seed=7, step=4)


def init_from_run(init_from, tmp_path, **wsp_fields):
    c = wsp_config()
    c.init_from = init_from
    c.wsp.update(wsp_fields)
    program = build_program(c, make_mesh(c.mesh, jax.devices()[:1]))
    from mim_jax.train import checkpoints
    with checkpoints.checkpoint_manager(str(tmp_path / "ckpt"), 1, False) as manager:
        _, state = start_state(c, program, manager, str(tmp_path))
    with open(tmp_path / "init_report.json") as f:
        return jax.device_get(state.params), json.load(f), program


@pytest.mark.slow
def test_mae_to_wsp_init_reports_and_copies_the_encoder(mae_run, tmp_path, capsys):
    """The MAE encoder is copied leaf for leaf; the learned table starts as MAE's sin-cos table; the head is fresh."""
    run_dir, mae_params = mae_run
    params, report, program = init_from_run(run_dir, tmp_path)
    out = capsys.readouterr().out
    assert f"Initializing weights from {run_dir} (step 4, subtree 'encoder')" in out
    assert "pos_embed <- the source's fixed sin-cos table (4x4 grid)" in out
    assert len(report["loaded"]) == len(jax.tree.leaves(mae_params["encoder"])) + 1
    assert "pos_embed" in report["loaded"] and "blocks/layers/attn/query/kernel" in report["loaded"]
    assert report["missing"] == [] and report["unexpected"] == [] and report["step"] == "4"
    jax.tree.map(np.testing.assert_array_equal,
                 {k: v for k, v in params["encoder"].items() if k != "pos_embed"}, mae_params["encoder"])
    np.testing.assert_array_equal(params["encoder"]["pos_embed"], sincos_2d(32, 4))
    fresh = jax.device_get(program.init_state(0)[0].params)
    jax.tree.map(np.testing.assert_array_equal, params["head"], fresh["head"])


@pytest.mark.slow
def test_mae_to_wsp_from_a_timm_layout_file(mae_run, tmp_path, capsys):
    """The MAE run exported under official MAE / timm names (sin-cos pos_embed) initializes WSP the same way."""
    from mim_jax.convert.conversion import convert
    run_dir, mae_params = mae_run
    path = str(tmp_path / "mae.safetensors")
    convert(run_dir, path, "timm")
    params, report, _ = init_from_run(path, tmp_path)
    assert report["step"] == "file" and report["missing"] == [] and "pos_embed" in report["loaded"]
    assert f"Initializing weights from {path} (step file, subtree 'encoder')" in capsys.readouterr().out
    np.testing.assert_array_equal(params["encoder"]["pos_embed"], sincos_2d(32, 4))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 {k: v for k, v in params["encoder"].items() if k != "pos_embed"}, mae_params["encoder"])


@pytest.mark.slow
def test_sincos_wsp_from_mae_loads_everything_without_a_table(mae_run, tmp_path):
    params, report, _ = init_from_run(mae_run[0], tmp_path, pos_embed="sincos")
    assert "pos_embed" not in params["encoder"] and report["notes"] == [] and report["missing"] == []


@pytest.mark.slow
def test_a_wider_init_from_is_one_line_naming_it(tmp_path):
    run_dir = str(tmp_path / "wide")
    c = tiny_pretrain_config("")
    c.model.update(dict(width=64, heads=2))
    make_run_dir(run_dir, c, seed=0, step=1)
    with pytest.raises(ConfigError, match=rf"^init_from='{run_dir}': its encoder is 64 wide but this model is 32 "
                                          r"\(model.variant='Ti/16'\); pick the matching size$"):
        init_from_run(run_dir, tmp_path / "x")


@pytest.mark.parametrize("field,value,message", [
    ("wsp.num_classes", 0, "wsp.num_classes=0: must be the size of the label vocabulary"),
    ("wsp.label_smoothing", 1.0, "wsp.label_smoothing=1.0: must lie in [0, 1)"),
    ("wsp.pos_embed", "rope", "wsp.pos_embed='rope': use one of ('learned', 'sincos')"),
    ("wsp.mixup", -0.5, "wsp.mixup=-0.5: is the mixup alpha: >= 0 (0 = off)"),
    ("wsp.mixup_prob", 1.5, "wsp.mixup_prob=1.5: must lie in [0, 1]"),
    ("init_from_subtree", "", "init_from_subtree='': WSP loads the encoder only"),
])
def test_bad_wsp_input_names_the_field(field, value, message, tmp_path):
    c = wsp_config()
    c.init_from = str(tmp_path)
    block, name = field.split(".") if "." in field else (None, field)
    (c[block] if block else c)[name] = value
    with pytest.raises(ConfigError) as err:
        registry.validate(c, check_data_path=False)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_dataset_without_labels_is_refused_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(wsp, "resolve_dataset_dir", lambda data: str(tmp_path))

    def no_labels(path, split):
        raise wsp.DatasetError(f"Split {split!r} of {path!r} has no labels")
    monkeypatch.setattr(wsp, "label_info", no_labels)
    with pytest.raises(ConfigError, match=rf"^objective='wsp' needs labels: Split 'train' of '{tmp_path}' has no"):
        wsp.check_dataset_labels(wsp_config())
    info = {"num_classes": 12, "multi_label": True, "max_set_size": 4}
    monkeypatch.setattr(wsp, "label_info", lambda path, split: info)
    with pytest.raises(ConfigError, match=r"^wsp.num_classes=10 is smaller than the 12 classes"):
        wsp.check_dataset_labels(wsp_config())
    info["num_classes"] = 10
    c = wsp_config()
    c.data.max_labels = 0
    with pytest.raises(ConfigError, match=r"^data.max_labels=0 but data.path=.* has label sets \(up to 4 labels\); "
                                          r"set --config.data.max_labels=4$"):
        wsp.check_dataset_labels(c)


@pytest.fixture(scope="module")
def tiny_multi_label_dataset(tmp_path_factory) -> str:
    """Multi-label shapes in real ArrayRecord shards (train 96 with label sets, val 40 single-label, 36 px)."""
    from mim_jax.data import synthetic
    out = str(tmp_path_factory.mktemp("data") / "shapes_ml")
    synthetic.generate(out, num_train=96, num_val=40, image_size=36, seed=0, num_shards=2, num_workers=1,
                       multi_label=True)
    return out


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("labels", ["single", "multi"])
def test_sigkill_resume_reproduces_the_uninterrupted_losses(labels, request, tmp_path):
    """A WSP run (one-element sets with in21k's RandAugment and mixup, or label sets of up to 4 tags) killed
    between checkpoints and re-run logs every step with the uninterrupted run's loss."""
    dataset = request.getfixturevalue("tiny_dataset" if labels == "single" else "tiny_multi_label_dataset")
    config = wsp_config(dataset, total_steps=16)
    config.data.max_labels = 0 if labels == "single" else 4
    if labels == "single":
        config.data.auto_augment, config.wsp.mixup = "rand-m9-n2", 0.5
    config.model.drop_path = 0.1
    config.ckpt.every_steps = 5
    config.evals.linear_probe.at_end = False
    assert_sigkill_resume_reproduces(config, tmp_path)


def test_recipes_follow_maws_tables_11_and_13():
    """configs/wsp.py: Table 11 (maws; the 2B/14 exceptions, 6.5B in fp32) and Table 13 (in21k)."""
    from mim_jax.config.cli import load_config_file
    b = load_config_file("configs/wsp.py:model=B/16,recipe=maws,init=/runs/mae_b16")
    assert b.init_from == "/runs/mae_b16"
    b.init_from = ""
    registry.validate(b, check_data_path=False)
    assert (b.objective, b.data.global_batch_size, b.wsp.num_classes, b.wsp.pos_embed) == ("wsp", 8192, 28_000,
                                                                                          "learned")
    assert b.total_steps == 5_000_000_000 // 8192 and b.optim.warmup_steps == b.total_steps // 20
    lr = optim.learning_rate_schedule(b.optim, 8192, b.total_steps)
    assert float(lr(b.optim.warmup_steps)) == pytest.approx(4e-4)
    half = (b.total_steps + b.optim.warmup_steps) // 2  # linear decay: half the peak half-way through the decay
    assert float(lr(half)) == pytest.approx(2e-4, rel=1e-4) and float(lr(b.total_steps)) == pytest.approx(0.0)
    assert (b.optim.b1, b.optim.b2, b.optim.weight_decay, b.optim.grad_clip_norm) == (0.9, 0.999, 0.1, 0.0)
    assert tuple(b.data.crop_scale) == (0.08, 1.0) and b.data.max_labels == 16
    two = load_config_file("configs/wsp.py:model=2B/14")
    assert (two.optim.base_lr * 8192 / 256, two.optim.b2, two.optim.grad_clip_norm) == (pytest.approx(1e-4), 0.95,
                                                                                        1.0)
    big = load_config_file("configs/wsp.py:model=6.5B/14,recipe=maws")
    assert (big.model.dtype, big.plan.topology, tuple(big.mesh.shape)) == ("float32", "v5p:8x8x8", (1, -1, 1))
    i21 = load_config_file("configs/wsp.py:model=L/16,recipe=in21k")
    registry.validate(i21, check_data_path=False)
    assert (i21.data.global_batch_size, i21.total_steps, i21.wsp.num_classes) == (4096, 90 * 14_197_122 // 4096,
                                                                                  21_841)
    assert i21.optim.warmup_steps == round(0.033 * i21.total_steps) and i21.optim.schedule == "cosine"
    assert float(optim.learning_rate_schedule(i21.optim, 4096, i21.total_steps)(i21.optim.warmup_steps)) == \
        pytest.approx(1e-3)
    assert (i21.optim.weight_decay, i21.optim.grad_clip_norm, i21.data.get("max_labels", 0)) == (0.1, 1.0, 0)
    from mim_jax.data.randaugment import RandAugmentSpec, parse_spec
    assert parse_spec(i21.data.auto_augment) == RandAugmentSpec(magnitude=9.0, num_ops=2)  # RandAugment (2, 9)
    assert (i21.wsp.mixup, i21.wsp.mixup_prob) == (0.5, 1.0)
    assert (b.data.auto_augment, b.wsp.mixup) == ("", 0.0)  # Table 11 has neither


def test_flops_count_the_encoder_on_all_tokens_and_the_head():
    """ViT-B/16 at 224 px, 28K classes: 197 tokens through 12 blocks, the patch embedding on 196, the head on CLS."""
    from mim_jax.config.cli import load_config_file
    from mim_jax.train.program import train_flops_per_step
    c = load_config_file("configs/wsp.py:model=B/16")
    s, d, m = 197, 768, 3072
    forward = 2 * 196 * 768 * d + 12 * (2 * (4 * d * d + 2 * d * m) * s + 4 * s * s * d) + 2 * d * d + 2 * d * 28_000
    assert wsp.flops_per_example(c) == 3 * forward
    assert train_flops_per_step(c) == 8192 * 3 * forward


@pytest.mark.slow
@pytest.mark.tpu_compile
def test_tiny_wsp_step_plans_on_a_tpu_slice_with_label_sets():
    """The WSP step (label sets in the batch, 1000 classes split over 'tensor', mixup's draws and gathers) compiles
    for v5p:2x2x1 and fits."""
    from mim_jax.cluster import plan
    c = wsp_config()
    c.wsp.num_classes, c.wsp.mixup = 1000, 0.5
    c.mesh.shape = (1, 2, 2)
    report = plan.plan(c, plan.parse_topology("v5p:2x2x1"))
    assert report.fits and report.devices == 4


def test_dataset_checks_on_real_shards(tiny_dataset, tiny_multi_label_dataset):
    """On generated shards: single-label shapes pass; multi-label shapes need data.max_labels (named with the fix)."""
    wsp.check_dataset_labels(wsp_config(tiny_dataset))
    c = wsp_config(tiny_multi_label_dataset)
    wsp.check_dataset_labels(c)
    c.data.max_labels = 0
    with pytest.raises(ConfigError, match=r"^data.max_labels=0 but data.path=.* has label sets \(up to \d labels\)"):
        wsp.check_dataset_labels(c)
