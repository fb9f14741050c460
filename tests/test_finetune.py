"""Fine-tuning pieces: layer-decay scales (B/16), the optimizer step vs numpy, mixup/cutmix/erasing, drop path."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax.config.defaults import finetune_config
from mim_jax.evaluate import finetune as ft
from mim_jax.models.vit import VIT_SIZES, Encoder, drop_path
from mim_jax.train import optim


def b16_classifier_params():
    s = VIT_SIZES["B/16"]
    encoder = Encoder(s.width, s.depth, s.heads, s.mlp_dim, s.patch_size, 224)
    model = ft.classifier_for(encoder, 1000, drop_path=0.1)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"])


def test_layer_decay_scales_follow_the_formula_for_b16():
    params = jax.tree.map(lambda x: getattr(x, "value", x), b16_classifier_params(),
                          is_leaf=lambda x: hasattr(x, "names"))
    scales = optim.layer_decay_scales(params, depth=12, decay=0.65)
    formula = lambda layer_id: 0.65 ** (12 + 1 - layer_id)
    enc = scales["encoder"]
    assert set(params["encoder"]) == {"patch_embed", "cls_token", "blocks"}  # no final norm: fc_norm replaces it
    for leaf in (enc["patch_embed"]["kernel"], enc["patch_embed"]["bias"], enc["cls_token"]):
        assert float(leaf) == pytest.approx(formula(0), rel=1e-6)
    for leaf in (scales["fc_norm"]["scale"], scales["head"]["kernel"], scales["head"]["bias"]):
        assert float(leaf) == pytest.approx(formula(13), rel=1e-6)  # 1.0
    block_leaves = jax.tree.leaves(enc["blocks"])
    assert len(block_leaves) == 16  # q/k/v/out kernel+bias, fc1/fc2 kernel+bias, 2 norms x (scale, bias)
    for leaf, param in zip(block_leaves, jax.tree.leaves(params["encoder"]["blocks"])):
        assert leaf.shape == (12,) + (1,) * (len(param.shape) - 1)
        np.testing.assert_allclose(np.asarray(leaf).ravel(), [formula(i + 1) for i in range(12)], rtol=1e-6)


@pytest.mark.slow
def test_finetune_optimizer_step_matches_numpy_adamw_with_layer_scales():
    rng = np.random.default_rng(0)
    params = {"encoder": {"cls_token": rng.normal(size=(1, 1, 4)),
                          "blocks": {"layers": {"fc1": {"kernel": rng.normal(size=(3, 4, 5)),
                                                        "bias": rng.normal(size=(3, 5))}}}},
              "head": {"kernel": rng.normal(size=(4, 2)), "bias": rng.normal(size=(2,))}}
    params = jax.tree.map(lambda x: x.astype(np.float32), params)
    grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
    scales = optim.layer_decay_scales(params, depth=3, decay=0.5)
    tx = optim.finetune_optimizer(0.1, scales, b1=0.9, b2=0.999, weight_decay=0.05)
    updates, _ = tx.update(grads, tx.init(params), params)
    # First AdamW step: bias-corrected m / sqrt(v) = g / (|g| + eps); decay only on kernels.
    adam = lambda g: g / (np.abs(g) + 1e-8)
    expect = {
        "cls_token": -0.1 * 0.5 ** 4 * adam(grads["encoder"]["cls_token"]),  # id 0, no weight decay
        "fc1_kernel": -0.1 * np.array([0.5 ** 3, 0.5 ** 2, 0.5])[:, None, None] * (
            adam(grads["encoder"]["blocks"]["layers"]["fc1"]["kernel"])
            + 0.05 * params["encoder"]["blocks"]["layers"]["fc1"]["kernel"]),
        "fc1_bias": -0.1 * np.array([0.5 ** 3, 0.5 ** 2, 0.5])[:, None] * adam(
            grads["encoder"]["blocks"]["layers"]["fc1"]["bias"]),
        "head_kernel": -0.1 * (adam(grads["head"]["kernel"]) + 0.05 * params["head"]["kernel"]),
        "head_bias": -0.1 * adam(grads["head"]["bias"]),
    }
    got = {"cls_token": updates["encoder"]["cls_token"],
           "fc1_kernel": updates["encoder"]["blocks"]["layers"]["fc1"]["kernel"],
           "fc1_bias": updates["encoder"]["blocks"]["layers"]["fc1"]["bias"],
           "head_kernel": updates["head"]["kernel"], "head_bias": updates["head"]["bias"]}
    for name in expect:
        np.testing.assert_allclose(got[name], expect[name], atol=1e-6, rtol=1e-5, err_msg=name)


def smooth(labels, num_classes, s):
    return (1 - s) * np.eye(num_classes)[labels] + s / num_classes


@pytest.mark.slow
def test_mixup_and_cutmix_match_closed_form():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6, 8, 3)).astype(np.float32)
    y = np.array([0, 2, 1, 2])
    mixed, targets = ft.mix_batch(x, y, {"lam": np.float32(0.3), "is_cut": np.bool_(False),
                                         "box": np.zeros(4, np.int32)}, 3, 0.1)
    np.testing.assert_allclose(mixed, 0.3 * x + 0.7 * x[::-1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(targets, 0.3 * smooth(y, 3, 0.1) + 0.7 * smooth(y[::-1], 3, 0.1), rtol=1e-6)
    box = np.array([1, 4, 2, 7], np.int32)  # rows 1..3, cols 2..6: 15 of 48 pixels
    lam = 1 - 15 / 48
    cut, targets = ft.mix_batch(x, y, {"lam": np.float32(lam), "is_cut": np.bool_(True), "box": box}, 3, 0.0)
    expect = x.copy()
    expect[:, 1:4, 2:7] = x[::-1, 1:4, 2:7]
    np.testing.assert_array_equal(cut, expect)
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(targets, lam * np.eye(3)[y] + (1 - lam) * np.eye(3)[y[::-1]], rtol=1e-6)


def test_sampled_cutmix_lam_is_the_kept_area_and_switch_probability_holds():
    e = finetune_config("B/16")
    rng = np.random.default_rng(2)
    draws = [ft.sample_mix(rng, e, 14, 14) for _ in range(2000)]
    cuts = [d for d in draws if d["is_cut"]]
    assert abs(len(cuts) / 2000 - 0.5) < 0.05
    for d in cuts:
        y0, y1, x0, x1 = d["box"]
        assert d["lam"] == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 196, abs=1e-6)
    mix_lams = np.array([d["lam"] for d in draws if not d["is_cut"]])
    assert abs(mix_lams.mean() - 0.5) < 0.03 and abs(mix_lams.var() - 1 / (4 * 2.6)) < 0.02  # Beta(0.8, 0.8)
    off = ml_collections.ConfigDict(dict(mixup_alpha=0.0, cutmix_alpha=0.0, mixup_switch_prob=0.5))
    assert ft.sample_mix(rng, off, 14, 14)["lam"] == 1.0


@pytest.mark.slow
def test_random_erasing_boxes_and_fill():
    rng = np.random.default_rng(3)
    boxes = ft.sample_erase(rng, 4000, 32, 32, prob=0.25)
    erased = boxes[:, 2] > 0
    assert abs(erased.mean() - 0.25) < 0.03
    top, left, h, w = boxes[erased].T
    assert (top + h <= 32).all() and (left + w <= 32).all() and (h < 32).all() and (w < 32).all()
    area = h * w / 1024
    assert area.min() > 0.01 and area.max() < 0.37  # U(0.02, 1/3) of the image, up to rounding
    x = np.full((2, 8, 8, 3), 5.0, np.float32)
    out = np.asarray(ft.random_erase(jax.random.key(0), x, np.array([[1, 2, 3, 4], [0, 0, 0, 0]], np.int32)))
    inside = np.zeros((8, 8), bool)
    inside[1:4, 2:6] = True
    assert (out[0][~inside] == 5.0).all() and (np.abs(out[0][inside]) < 5.0).all()
    np.testing.assert_array_equal(out[1], x[1])


@pytest.mark.slow
def test_drop_path_statistics_and_default_off():
    x = jnp.ones((20000, 2, 3))
    out = np.asarray(drop_path(x, jnp.float32(0.3), jax.random.key(0)))
    dropped = (out == 0).all(axis=(1, 2))
    assert abs(dropped.mean() - 0.3) < 0.02
    np.testing.assert_allclose(out[~dropped], 1 / 0.7, rtol=1e-6)  # kept samples rescaled: unbiased
    encoder = Encoder(16, 2, 2, 32, 8, 16, drop_path_rate=0.5)
    images = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
    params = encoder.init(jax.random.key(2), images)
    plain = Encoder(16, 2, 2, 32, 8, 16).apply(params, images)
    np.testing.assert_array_equal(encoder.apply(params, images), plain)  # eval mode: no drop path
    trained = encoder.apply(params, images, train=True, rngs={"dropout": jax.random.key(3)})
    assert not np.allclose(trained, plain)
