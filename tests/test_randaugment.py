"""RandAugment (mim_jax.data.randaugment): timm spec parsing, each op against numpy or geometry, magnitude
sampling, op choice, determinism, and the fine-tuning train pipeline with it switched on."""
import itertools
import math
import types

import numpy as np
import pytest
from PIL import Image

from mim_jax.config import defaults, validation
from mim_jax.data import pipeline, synthetic
from mim_jax.data import randaugment as ra
from mim_jax.errors import ConfigError

MAE = "rand-m9-mstd0.5-inc1"


def _image(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(array, np.uint8))


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int64)


def _random_image(seed: int = 0, size: int = 24) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _centroid(img: Image.Image) -> tuple[float, float]:
    """(x, y) centroid of the brightness above the fill colour."""
    weight = np.clip(_pixels(img).sum(-1) - sum(ra.FILL), 0, None).astype(float)
    ys, xs = np.indices(weight.shape)
    return float((xs * weight).sum() / weight.sum()), float((ys * weight).sum() / weight.sum())


def _blob(size: int, x: int, y: int) -> Image.Image:
    """A fill-coloured image with a white 3x3 square centred on pixel (x, y)."""
    a = np.broadcast_to(np.array(ra.FILL, np.uint8), (size, size, 3)).copy()
    a[y - 1:y + 2, x - 1:x + 2] = 255
    return _image(a)


# --------------------------------------------------------------------------- parsing

def test_parse_mae_and_other_specs():
    assert ra.parse_spec(MAE) == ra.RandAugmentSpec(magnitude=9, num_ops=2, magnitude_std=0.5, increasing=True)
    assert ra.parse_spec("rand-m9-n2-mstd0.5") == ra.RandAugmentSpec(magnitude=9, magnitude_std=0.5)
    assert ra.parse_spec("rand") == ra.RandAugmentSpec(magnitude=10, num_ops=2, magnitude_std=0, increasing=False)
    assert ra.parse_spec("rand-n3-inc0-m7-mmax12") == ra.RandAugmentSpec(magnitude=7, num_ops=3, magnitude_max=12)
    assert ra.parse_spec("rand-mstd101").magnitude_std == math.inf  # timm: > 100 means uniform in [0, m]
    assert ra.parse_spec("") is None
    assert ra.FILL == (124, 116, 104)


@pytest.mark.parametrize("spec, why", [
    ("augmix-m9", "only RandAugment"), ("rand-m9-x3", "unknown section 'x3'"), ("rand-w0", "unknown section 'w0'"),
    ("rand-m", "needs a non-negative number"), ("rand-m9-m8", "given twice"), ("rand-n0", "n must be >= 1"),
    ("rand-n1.5", "n must be an integer"), ("rand--m9", "unknown section ''"), (9, "must be a string"),
])
def test_bad_specs_name_the_field_and_the_fix(spec, why):
    with pytest.raises(ConfigError, match=rf"eval\.auto_augment={spec!r}: .*{why}.*'{MAE}'"):
        ra.parse_spec(spec, "eval.auto_augment")


def test_finetune_config_carries_and_validates_the_spec():
    e = defaults.finetune_config("B/16")
    assert e.auto_augment == MAE
    e.auto_augment = "rand-m9-q1"
    with pytest.raises(ConfigError, match=r"evals\.finetune\.auto_augment='rand-m9-q1': unknown section"):
        validation.validate_eval(e, "evals.finetune")
    e.auto_augment = ""
    validation.validate_eval(e, "evals.finetune")


def test_op_lists_are_timms():
    assert ra.op_names(ra.parse_spec(MAE)) == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
        "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
        "TranslateXRel", "TranslateYRel")
    assert len(ra.op_names(ra.parse_spec("rand-m9"))) == 15 and "Posterize" in ra.op_names(ra.parse_spec("rand"))


# --------------------------------------------------------------------------- pixel ops against numpy

def test_invert_posterize_solarize_solarize_add_match_numpy():
    x = _random_image()
    img, rng = _image(x), np.random.default_rng(0)
    np.testing.assert_array_equal(_pixels(ra.apply_op(img, "Invert", 9, rng)), 255 - x)
    # Increasing variants at m9: keep 4 - int(3.6) = 1 bit; invert >= 256 - int(230.4) = 26.
    np.testing.assert_array_equal(_pixels(ra.apply_op(img, "PosterizeIncreasing", 9, rng)), x & 0b1000_0000)
    np.testing.assert_array_equal(_pixels(ra.apply_op(img, "PosterizeIncreasing", 10, rng)), 0 * x)
    np.testing.assert_array_equal(_pixels(ra.apply_op(img, "PosterizeIncreasing", 0, rng)), x & 0b1111_0000)
    np.testing.assert_array_equal(_pixels(ra.apply_op(img, "SolarizeIncreasing", 9, rng)),
                                  np.where(x >= 26, 255 - x.astype(int), x))
    np.testing.assert_array_equal(_pixels(ra.apply_op(img, "SolarizeIncreasing", 0, rng)), x)
    np.testing.assert_array_equal(_pixels(ra.apply_op(img, "Solarize", 5, rng)),
                                  np.where(x >= 128, 255 - x.astype(int), x))  # non-increasing: int(0.5 * 256)
    # SolarizeAdd at m9: + int(99) below 128, clipped at 255.
    np.testing.assert_array_equal(_pixels(ra.apply_op(img, "SolarizeAdd", 9, rng)),
                                  np.where(x < 128, np.minimum(x.astype(int) + 99, 255), x))


def test_enhance_ops_blend_as_specified():
    gray = _image(np.full((8, 8, 3), 100))
    np.testing.assert_allclose(_pixels(ra.brightness(gray, 1.81)), 181, atol=1)  # brightness scales by f
    np.testing.assert_allclose(_pixels(ra.brightness(gray, 0.19)), 19, atol=1)
    halves = np.zeros((8, 8, 3), np.uint8)
    halves[:, :4], halves[:, 4:] = 80, 160  # mean gray 120
    np.testing.assert_allclose(_pixels(ra.contrast(_image(halves), 0.5))[0, [0, 7], 0], [100, 140], atol=1)
    rgb = _image(np.broadcast_to(np.array([200, 100, 50], np.uint8), (4, 4, 3)))
    luma = (200 * 299 + 100 * 587 + 50 * 114) / 1000  # PIL's L conversion
    np.testing.assert_allclose(_pixels(ra.color(rgb, 0.1))[0, 0], 0.9 * luma + 0.1 * np.array([200, 100, 50]), atol=1)
    flat = _image(np.full((8, 8, 3), 77))
    np.testing.assert_array_equal(_pixels(ra.sharpness(flat, 1.9)), 77)  # nothing to sharpen


def test_autocontrast_and_equalize_stretch_the_range():
    x = np.random.default_rng(1).integers(50, 151, (32, 32, 3))  # equalize needs > 255 pixels to act
    x[0, 0], x[0, 1] = 50, 150
    out = _pixels(ra.auto_contrast(_image(x)))
    np.testing.assert_allclose(out, (x - 50) * 255 / 100, atol=1)  # linear map of [50, 150] onto [0, 255]
    eq = _pixels(ra.equalize(_image(x)))
    assert eq.min() < 20 and eq.max() == 255
    order = np.argsort(x[..., 0], axis=None)
    assert (np.diff(eq[..., 0].ravel()[order]) >= 0).all()  # monotone per channel


# --------------------------------------------------------------------------- geometry

def test_translate_moves_content_by_the_fraction_and_fills_with_the_mean():
    img = _blob(40, 20, 12)
    assert _centroid(ra.translate_x(img, 0.25)) == pytest.approx((10, 12), abs=1e-6)  # 0.25 * 40 px to the left
    assert _centroid(ra.translate_y(img, -0.25)) == pytest.approx((20, 22), abs=1e-6)  # 10 px down
    shifted = _pixels(ra.translate_x(_image(np.full((8, 8, 3), 255)), 0.5))
    np.testing.assert_array_equal(shifted[:, 4:], np.broadcast_to(ra.FILL, (8, 4, 3)))  # exposed half: the fill
    np.testing.assert_array_equal(shifted[:, :4], 255)


def test_shear_and_rotate_map_points_as_the_formulas_say():
    img = _blob(48, 30, 24)
    # Output (x, y) samples input (x + s*y, y) at pixel centres: the blob moves to x = 30 - s*(24.5) (+0.5 shift).
    x, y = _centroid(ra.shear_x(img, 0.2))
    assert (x, y) == pytest.approx((30 - 0.2 * 24.5, 24), abs=0.15)
    x, y = _centroid(ra.shear_y(img, -0.2))
    assert (x, y) == pytest.approx((30, 24 + 0.2 * 30.5), abs=0.15)
    # Rotate at m9 is +/- 27 degrees, counter-clockwise about the centre (24, 24) for positive angles.
    (angle,) = {abs(ra._rotate_arg(0.9, np.random.default_rng(s))) for s in range(10)}
    assert angle == pytest.approx(27)
    x, y = _centroid(ra.rotate(img, angle))
    dx, dy, c, s = 6.5, 0.5, math.cos(math.radians(angle)), math.sin(math.radians(angle))  # blob (30.5, 24.5)
    assert (x + 0.5, y + 0.5) == pytest.approx((24 + dx * c + dy * s, 24 - dx * s + dy * c), abs=0.15)  # y down


def test_magnitude_to_argument_mapping_and_random_sign():
    rng = np.random.default_rng(0)
    assert ra._shear_arg(0.9, rng) in (pytest.approx(0.27), pytest.approx(-0.27))
    assert abs(ra._translate_arg(0.9, rng)) == pytest.approx(0.405)
    assert ra._posterize_increasing_arg(0.9, rng) == 1 and ra._posterize_increasing_arg(0.0, rng) == 4
    assert ra._solarize_increasing_arg(0.9, rng) == 26 and ra._solarize_add_arg(0.9, rng) == 99
    assert ra._enhance_arg(0.9, rng) == pytest.approx(1.72)
    factors = np.array([ra._enhance_increasing_arg(0.9, rng) for _ in range(4000)])
    assert set(np.round(factors, 6)) == {0.19, 1.81}  # 1 +/- 0.9 * 0.9
    assert abs((factors > 1).mean() - 0.5) < 0.03
    assert ra._enhance_increasing_arg(1.2, rng) >= 0.1  # mmax > 10 cannot make a negative factor


# --------------------------------------------------------------------------- sampling

def test_magnitude_noise_is_gaussian_and_clipped():
    rng = np.random.default_rng(0)
    draws = np.array([ra.sample_magnitude(ra.parse_spec(MAE), rng) for _ in range(20000)])
    assert abs(draws.mean() - 9) < 0.02 and abs(draws.std() - 0.5) < 0.02
    assert draws.min() >= 0 and draws.max() == 10
    assert abs((draws == 10).mean() - 0.0228) < 0.005  # P(N(9, 0.5) > 10), clipped to 10
    assert ra.sample_magnitude(ra.parse_spec("rand-m9"), rng) == 9
    uniform = np.array([ra.sample_magnitude(ra.parse_spec("rand-m9-mstd101"), rng) for _ in range(5000)])
    assert abs(uniform.mean() - 4.5) < 0.15 and 0 <= uniform.min() and uniform.max() <= 9


def test_ops_are_chosen_uniformly_and_applied_with_probability_half(monkeypatch):
    applied = []
    monkeypatch.setattr(ra, "apply_op", lambda img, name, magnitude, rng: applied.append(name) or img)
    spec, rng, img = ra.parse_spec(MAE), np.random.default_rng(0), _image(_random_image())
    for _ in range(6000):
        ra.rand_augment(img, spec, rng)
    assert abs(len(applied) / 12000 - 0.5) < 0.02
    counts = np.array([applied.count(name) for name in ra.op_names(spec)])
    assert counts.sum() == len(applied) and (np.abs(counts / len(applied) - 1 / 15) < 0.015).all()


def test_same_seed_same_image_and_seeds_differ():
    img, spec = _image(_random_image(size=32)), ra.parse_spec(MAE)
    outs = [_pixels(ra.rand_augment(img, spec, np.random.default_rng(s))) for s in range(8)]
    np.testing.assert_array_equal(_pixels(ra.rand_augment(img, spec, np.random.default_rng(3))), outs[3])
    assert sum(not np.array_equal(a, b) for a, b in itertools.combinations(outs, 2)) >= 25  # of 28 pairs
    assert all(o.shape == (32, 32, 3) for o in outs)


# --------------------------------------------------------------------------- pipeline

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("randaugment") / "shapes"
    synthetic.generate(str(out), num_train=24, num_val=4, image_size=32, seed=0, num_shards=2)
    return str(out)


def _batches(dataset, n, **kwargs):
    args = {"global_batch_size": 8, "image_size": 24, "seed": 0, "auto_augment": MAE}
    args.update(kwargs)
    iterator = pipeline.train_batches(dataset, "train", **args)
    return [{k: np.array(v) for k, v in b.items()} for b in itertools.islice(iterator, n)]


@pytest.mark.slow
def test_pipeline_batches_depend_only_on_seed_and_step_not_processes_or_workers(dataset):
    single = _batches(dataset, 3)
    assert single[0]["image"].shape == (8, 24, 24, 3) and single[0]["image"].dtype == np.uint8
    halves = [_batches(dataset, 2, process_index=p, process_count=2, start_step=1) for p in range(2)]
    for s in range(2):
        np.testing.assert_array_equal(np.concatenate([h[s]["image"] for h in halves]), single[s + 1]["image"])
    for ours, theirs in zip(_batches(dataset, 3, num_workers=2), single):  # worker processes: same batches
        np.testing.assert_array_equal(ours["image"], theirs["image"])
    plain = _batches(dataset, 3, auto_augment="")
    changed = [not np.array_equal(a, b) for x, y in zip(single, plain) for a, b in zip(x["image"], y["image"])]
    assert 0.3 < np.mean(changed) < 1.0  # P(no op applied) = 1/4, plus ops that leave an image unchanged
    for x, y in zip(single, plain):
        np.testing.assert_array_equal(x["label"], y["label"])


def test_finetune_batches_use_the_configured_spec(dataset):
    from mim_jax.evaluate import finetune as ft  # imports jax: keep it local

    ctx = types.SimpleNamespace(dataset_dir=dataset, train_split="train", seed=0)
    e = defaults.finetune_config("Ti/16")
    e.update({"batch_size": 8, "crop_scale": (0.2, 1.0)})
    ours = list(itertools.islice(ft.finetune_batches(ctx, e, 24), 2))
    for a, b in zip(ours, _batches(dataset, 2, crop_scale=(0.2, 1.0))):
        np.testing.assert_array_equal(a["image"], b["image"])
