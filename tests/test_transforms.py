"""Tests for mim_jax.data.transforms: crop-box statistics, crops, flips, normalization, decoding."""

import io
import math

import jax
import numpy as np
import pytest
from PIL import Image

from mim_jax.data import transforms


def _coordinate_image(width, height):
    """RGB image with R = x and G = y (so crops reveal where they came from)."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs, ys, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def test_sample_crop_box_obeys_scale_and_ratio():
    rng = np.random.default_rng(0)
    width, height, scale, ratio = 1000, 800, (0.2, 1.0), (3 / 4, 4 / 3)
    boxes = np.array([transforms.sample_crop_box(width, height, scale, ratio, rng) for _ in range(3000)])
    left, top, w, h = boxes.T
    assert (left >= 0).all() and (top >= 0).all()
    assert (left + w <= width).all() and (top + h <= height).all()
    fraction = w * h / (width * height)
    aspect = w / h
    # Rounding w and h to integers moves area and aspect by < 0.5 px on sides >= ~300 px.
    assert fraction.min() >= 0.2 * 0.995 and fraction.max() <= 1.0
    assert aspect.min() >= 0.75 * 0.995 and aspect.max() <= 4 / 3 * 1.005
    # Draws cover the ranges: area ~ U(0.2, 1) restricted to boxes that fit; aspect log-uniform.
    assert fraction.min() < 0.21 and fraction.max() > 0.95
    assert abs(np.median(fraction[fraction < 0.6]) - 0.4) < 0.02
    # Below half the area every box fits, so there log(aspect) ~ U(-log 4/3, log 4/3) unbiased.
    log_aspect = np.log(aspect[fraction < 0.5])
    assert abs(log_aspect.mean()) < 0.015
    assert log_aspect.std() == pytest.approx(math.log(4 / 3) / math.sqrt(3), rel=0.05)
    # Offsets are uniform over the free room.
    room = width - w
    assert np.mean(left / np.maximum(room, 1)) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize(
    "width, height, scale, expected",
    [
        (1000, 10, (0.9, 1.0), (493, 0, 13, 10)),  # Too wide: height kept, w = round(10 * 4/3).
        (10, 1000, (0.9, 1.0), (0, 493, 10, 13)),  # Too tall: width kept, h = round(10 / (3/4)).
        (100, 90, (2.0, 3.0), (0, 0, 100, 90)),  # No box fits, aspect within range: whole image.
    ],
)
def test_sample_crop_box_fallback(width, height, scale, expected):
    rng = np.random.default_rng(0)
    assert transforms.sample_crop_box(width, height, scale, (3 / 4, 4 / 3), rng) == expected


def test_random_resized_crop_size_and_location():
    image = _coordinate_image(200, 160)
    for seed in range(20):
        out = transforms.random_resized_crop(image, 24, rng=np.random.default_rng(seed))
        assert out.size == (24, 24) and out.mode == "RGB"
        left, top, w, h = transforms.sample_crop_box(
            200, 160, (0.2, 1.0), (3 / 4, 4 / 3), np.random.default_rng(seed))
        pixels = np.asarray(out, dtype=np.float64)
        # A linear ramp survives resampling: mean x (y) of the output is the box's centre.
        assert pixels[..., 0].mean() == pytest.approx(left + w / 2 - 0.5, abs=1.0)
        assert pixels[..., 1].mean() == pytest.approx(top + h / 2 - 0.5, abs=1.0)


def test_random_flip_matches_numpy():
    image = _coordinate_image(7, 5)
    array = np.asarray(image)
    flipped_seed = next(s for s in range(100) if np.random.default_rng(s).random() < 0.5)
    kept_seed = next(s for s in range(100) if np.random.default_rng(s).random() >= 0.5)
    out = transforms.random_flip(image, np.random.default_rng(flipped_seed))
    np.testing.assert_array_equal(np.asarray(out), np.fliplr(array))
    out = transforms.random_flip(image, np.random.default_rng(kept_seed))
    np.testing.assert_array_equal(np.asarray(out), array)
    rng = np.random.default_rng(0)
    flips = [np.asarray(transforms.random_flip(image, rng))[0, 0, 0] == 6 for _ in range(2000)]
    assert np.mean(flips) == pytest.approx(0.5, abs=0.04)


def test_normalize_matches_numpy_formula():
    mean, std = np.array(transforms.IMAGENET_MEAN), np.array(transforms.IMAGENET_STD)
    images = np.random.default_rng(0).integers(0, 256, size=(2, 5, 5, 3), dtype=np.uint8)
    expected = (images / 255.0 - mean) / std
    out = jax.jit(transforms.normalize)(images)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(transforms.normalize(images.astype(np.float32))), expected, atol=1e-5)
    # Reference values: black and white pixels.
    np.testing.assert_allclose(np.asarray(transforms.normalize(np.zeros(3, np.uint8))),
                               [-2.117904, -2.035714, -1.804444], atol=1e-5)
    np.testing.assert_allclose(np.asarray(transforms.normalize(np.full(3, 255, np.uint8))),
                               [2.248908, 2.428571, 2.64], atol=1e-5)


@pytest.mark.parametrize("width, height", [(100, 50), (50, 100), (72, 72)])
def test_center_crop_eval(width, height):
    image = _coordinate_image(width, height)
    out = transforms.center_crop_eval(image, 32)  # Shorter side -> int(32 / 0.875) = 36.
    assert out.size == (32, 32)
    pixels = np.asarray(out, dtype=np.float64)
    # The crop is centred: the mean coordinate is the image centre.
    assert pixels[..., 0].mean() == pytest.approx((width - 1) / 2, abs=1.0)
    assert pixels[..., 1].mean() == pytest.approx((height - 1) / 2, abs=1.0)
    # It keeps 32 of the 36 resized pixels across the shorter side: 31 pixel steps of short/36.
    short, channel = (width, 0) if width <= height else (height, 1)
    centre_row = pixels[16, :, 0] if channel == 0 else pixels[:, 16, 1]
    assert centre_row[-1] - centre_row[0] == pytest.approx(31 * short / 36, abs=1.0)


@pytest.mark.parametrize("mode, fmt, value, expected", [
    ("L", "PNG", 128, (128, 128, 128)),
    ("RGBA", "PNG", (10, 20, 30, 0), (10, 20, 30)),
    ("LA", "PNG", (77, 255), (77, 77, 77)),
    ("RGB", "PNG", (1, 2, 3), (1, 2, 3)),
    ("I;16", "PNG", 7, None),
    ("CMYK", "JPEG", (0, 0, 0, 0), (255, 255, 255)),
])
def test_decode_image_converts_to_rgb(mode, fmt, value, expected):
    buffer = io.BytesIO()
    Image.new(mode, (6, 4), value).save(buffer, format=fmt)
    image = transforms.decode_image(buffer.getvalue())
    assert image.mode == "RGB" and image.size == (6, 4)
    if expected is not None:
        assert image.getpixel((0, 0)) == pytest.approx(expected, abs=2)


def test_decode_image_palette():
    buffer = io.BytesIO()
    palette_image = Image.new("P", (4, 4), 1)
    palette_image.putpalette([0, 0, 0, 200, 10, 50])
    palette_image.save(buffer, format="PNG")
    image = transforms.decode_image(buffer.getvalue())
    assert image.mode == "RGB" and image.getpixel((1, 1)) == (200, 10, 50)


def _smooth_jpeg(width, height):
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([128 + 100 * np.sin(xs / 37.0), 128 + 100 * np.cos(ys / 23.0), (xs + ys) % 256 * 0 + 90], -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_draft_for_crop_decodes_jpeg_at_reduced_scale_without_upsampling():
    data = _smooth_jpeg(640, 480)
    box = (100, 40, 400, 360)  # 400 x 360 px crop -> 64 px output: factor 5, so a 1/4-scale decode.
    image, scaled = transforms.draft_for_crop(transforms.open_image(data), box, 64)
    assert image.size == (160, 120)
    assert scaled == (25.0, 10.0, 125.0, 100.0)  # The same region in quarter-scale coordinates (>= 64 px).
    fast = np.asarray(transforms.resized_crop(transforms.to_rgb(image), scaled, 64), np.float64)
    full = np.asarray(transforms.decode_image(data).resize((64, 64), Image.BICUBIC, box=(100, 40, 500, 400)),
                      np.float64)
    assert np.abs(fast - full).mean() < 2.0  # Same picture, up to DCT-scaling and resampling differences.
    # Crops that would need upsampling after a reduction, and PNGs, decode at full size.
    small, same_box = transforms.draft_for_crop(transforms.open_image(data), (0, 0, 120, 100), 64)
    assert small.size == (640, 480) and same_box == (0, 0, 120, 100)
    buffer = io.BytesIO()
    Image.new("RGB", (640, 480)).save(buffer, format="PNG")
    png, png_box = transforms.draft_for_crop(transforms.open_image(buffer.getvalue()), box, 64)
    assert png.size == (640, 480) and png_box == (100, 40, 500, 400)


def test_draft_for_resize_keeps_the_short_side_large_enough():
    image = transforms.draft_for_resize(transforms.open_image(_smooth_jpeg(640, 480)), 100)
    assert image.size == (160, 120) and min(image.size) >= 100  # 480 // 100 = 4 -> quarter scale.
    assert transforms.draft_for_resize(transforms.open_image(_smooth_jpeg(640, 480)), 300).size == (640, 480)
