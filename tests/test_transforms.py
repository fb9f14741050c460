"""Tests for mim_jax.data.transforms: crop-box statistics, crops, flips, normalization, decoding."""

import io
import math

import jax
import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

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


@pytest.mark.slow
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


# --- The OpenCV fast path (decode_resized_crop / decode_center_crop) against the PIL reference. ---

def _encode(image, fmt, **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _textured_jpeg(width=500, height=375):
    """Waves at several frequencies plus pixel noise (sigma 12): aliasing and sub-pixel shifts show up."""
    ys, xs = np.mgrid[0:height, 0:width]
    waves = np.stack([128 + 90 * np.sin(xs / 13.0 + ys / 29.0), 128 + 90 * np.cos(ys / 7.0),
                      128 + 60 * np.sin((xs - ys) / 5.0)], axis=-1)
    noise = np.random.default_rng(0).normal(0, 12, waves.shape)
    return _encode(Image.fromarray(np.clip(waves + noise, 0, 255).astype(np.uint8)), "JPEG", quality=95)


def _crop(data, box, size, use_opencv=True):
    return transforms.decode_resized_crop(transforms.open_image(data), data, box, size, use_opencv)


@pytest.mark.parametrize("box, size, scale, max_mean", [  # box = (left, top, width, height)
    ((10, 20, 140, 100), 224, 1, 1.0),   # Upsampling 1.6x / 2.2x: bicubic (measured mean 0.60).
    ((0, 0, 250, 200), 224, 1, 1.2),     # Shrinking 1.1x, upsampling 1.1x (0.86).
    ((30, 10, 300, 290), 224, 1, 1.5),   # Shrinking 1.3x: Gaussian pre-blur + bicubic (1.14).
    ((5, 7, 470, 350), 100, 2, 2.5),     # 1/2-scale decode, fractional box edges, shrinking 2.35x / 1.75x (2.05).
    ((100, 40, 300, 290), 64, 4, 2.0),   # 1/4-scale decode, fractional edges, shrinking 1.2x / 1.1x (1.43).
])
def test_opencv_resized_crop_matches_pil_bicubic(box, size, scale, max_mean):
    data = _textured_jpeg()
    assert transforms.crop_draft_scale(transforms.open_image(data), box, size) == scale
    fast, reference = _crop(data, box, size), _crop(data, box, size, use_opencv=False)
    assert fast.shape == reference.shape == (size, size, 3) and fast.dtype == np.uint8
    diff = np.abs(fast.astype(np.float64) - reference)
    # Kernels differ (OpenCV's cubic has a = -0.75; antialiasing is a Gaussian, not PIL's stretched cubic;
    # edges replicate inside the box), which this pixel-noise texture shows most; on photo-like images
    # (benchmarks/input_pipeline.py) the mean difference per image measured <= 1.5 for every crop.
    assert diff.mean() < max_mean and np.percentile(diff, 99) <= 8


def test_opencv_area_resize_for_large_shrinks_matches_pil():
    data = _encode(transforms.open_image(_textured_jpeg()).convert("RGB"), "PNG")  # PNGs never decode reduced.
    box = (0, 0, 480, 360)  # 4.8x / 3.6x shrink: area averaging.
    fast, reference = _crop(data, box, 100), _crop(data, box, 100, use_opencv=False)
    assert np.abs(fast.astype(np.float64) - reference).mean() < 1.5


def _gradient_jpeg(width=640, height=480):
    """R = x, G = y scaled to 0..255, B constant: a crop's mean colour locates it to a fraction of a pixel."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 / (width - 1), ys * 255 / (height - 1), np.full(xs.shape, 90)], -1)
    return _encode(Image.fromarray(np.round(pixels).astype(np.uint8)), "JPEG", quality=98)


@pytest.mark.parametrize("box, size, scale", [  # box = (left, top, width, height)
    ((101, 43, 202, 191), 64, 2),   # Half-pixel edges at 1/2 scale.
    ((99, 37, 413, 395), 64, 4),    # 3/4 and 1/4 px edges at 1/4 scale.
    ((3, 5, 630, 470), 48, 8),      # 1/8 scale.
])
def test_reduced_decode_keeps_the_crop_geometry(box, size, scale):
    data = _gradient_jpeg()
    image = transforms.open_image(data)
    assert transforms.crop_draft_scale(image, box, size) == scale
    drafted, _ = transforms.draft_for_crop(transforms.open_image(data), box, size)
    assert transforms.decode_array(data, scale).shape == (drafted.height, drafted.width, 3)  # Same reduced size.
    fast, reference = _crop(data, box, size), _crop(data, box, size, use_opencv=False)
    # Mean R (G) is the box's mean x (y): equal to 0.15 level = 0.4 px (0.3 px) of the full image (measured
    # <= 0.06), i.e. sub-pixel box edges are honoured (rounding them to whole reduced pixels moves it by up
    # to s/2 px).
    np.testing.assert_allclose(fast.mean(axis=(0, 1)), reference.mean(axis=(0, 1)), atol=0.15)
    left, top, w, h = box
    assert fast[..., 0].mean() == pytest.approx((left + w / 2 - 0.5) * 255 / 639, abs=1.0)
    assert fast[..., 1].mean() == pytest.approx((top + h / 2 - 0.5) * 255 / 479, abs=1.0)
    assert np.abs(fast.astype(np.float64) - reference).mean() < 1.0


def test_draft_scale_matches_pil_draft():
    data = _gradient_jpeg(1000, 750)
    rng = np.random.default_rng(0)
    for size in (32, 64, 96, 224):
        for _ in range(50):
            box = transforms.sample_crop_box(1000, 750, (0.05, 1.0), (3 / 4, 4 / 3), rng)
            scale = transforms.crop_draft_scale(transforms.open_image(data), box, size)
            drafted, _ = transforms.draft_for_crop(transforms.open_image(data), box, size)
            assert drafted.size == (-(-1000 // scale), -(-750 // scale))
    for short in (64, 100, 256, 400):
        scale = transforms.resize_draft_scale(transforms.open_image(data), short)
        drafted = transforms.draft_for_resize(transforms.open_image(data), short)
        assert drafted.size == (-(-1000 // scale), -(-750 // scale))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("colour", [(255, 0, 0), (0, 0, 255)])
def test_opencv_path_returns_rgb_channel_order(fmt, colour):
    data = _encode(Image.new("RGB", (80, 60), colour), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    image = transforms.open_image(data)
    assert transforms.opencv_decodable(image, data)
    np.testing.assert_allclose(transforms.decode_array(data)[0, 0], colour, atol=2)
    np.testing.assert_allclose(_crop(data, (5, 5, 60, 50), 32).reshape(-1, 3).mean(0), colour, atol=2)
    np.testing.assert_allclose(transforms.decode_center_crop(image, data, 32).reshape(-1, 3).mean(0), colour,
                               atol=2)


def _palette_png():
    image = Image.new("P", (40, 30), 1)
    image.putpalette([0, 0, 0, 200, 10, 50])
    return _encode(image, "PNG")


@pytest.mark.parametrize("data, opencv, expected", [
    (_encode(Image.new("L", (40, 30), 128), "PNG"), True, (128, 128, 128)),
    (_encode(Image.new("L", (40, 30), 128), "JPEG"), True, (128, 128, 128)),
    (_encode(Image.new("RGBA", (40, 30), (10, 20, 30, 0)), "PNG"), False, (10, 20, 30)),
    (_encode(Image.new("LA", (40, 30), (77, 255)), "PNG"), False, (77, 77, 77)),
    (_palette_png(), False, (200, 10, 50)),
    (_encode(Image.new("CMYK", (40, 30), (0, 0, 0, 0)), "JPEG"), False, (255, 255, 255)),
    (_encode(Image.new("I;16", (40, 30), 7), "PNG"), False, None),
    (_encode(Image.new("RGB", (40, 30), (1, 2, 3)), "WEBP", lossless=True), False, (1, 2, 3)),
], ids=["L-png", "L-jpeg", "RGBA", "LA", "P", "CMYK", "I16", "webp"])
def test_every_mode_gives_rgb_uint8_hwc(data, opencv, expected):
    image = transforms.open_image(data)
    assert transforms.opencv_decodable(image, data) == opencv  # False: decoded by PIL, as before.
    for use_opencv in (True, False):
        crop = _crop(data, (2, 3, 30, 25), 16, use_opencv)
        centre = transforms.decode_center_crop(transforms.open_image(data), data, 16, use_opencv=use_opencv)
        for out in (crop, centre):
            assert out.shape == (16, 16, 3) and out.dtype == np.uint8
            if expected is not None:
                np.testing.assert_allclose(out.reshape(-1, 3).mean(0), expected, atol=2)


def test_exif_orientation_is_ignored_as_pil_does():
    exif = Image.Exif()
    exif[0x0112] = 6  # "Rotate 90 CW": PIL's Image.open does not apply it, so neither may OpenCV.
    data = _encode(Image.fromarray(np.asarray(transforms.open_image(_gradient_jpeg(64, 48)))), "JPEG", quality=98,
                   exif=exif.tobytes())
    assert transforms.open_image(data).size == (64, 48)
    assert transforms.decode_array(data).shape == (48, 64, 3)
    fast, reference = _crop(data, (0, 0, 64, 48), 32), _crop(data, (0, 0, 64, 48), 32, use_opencv=False)
    assert np.abs(fast.astype(np.float64) - reference).mean() < 1.0


def _junk_cases():
    jpeg = _textured_jpeg(120, 90)
    png = _encode(Image.new("RGB", (120, 90), (1, 2, 3)), "PNG")
    return [("junk", b"not an image at all"), ("truncated-jpeg", jpeg[: len(jpeg) // 2]),
            ("truncated-png", png[: len(png) // 2])]


@pytest.mark.parametrize("name, data", _junk_cases(), ids=[n for n, _ in _junk_cases()])
def test_corrupt_bytes_raise_the_same_error_as_pil(name, data):
    errors = []
    for use_opencv in (True, False):
        with pytest.raises(OSError) as info:  # PIL's UnidentifiedImageError is an OSError too.
            transforms.decode_resized_crop(transforms.open_image(data), data, (0, 0, 60, 60), 32, use_opencv)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1], name
    if name == "truncated-jpeg":
        assert "truncated" in errors[0][1]
    if name == "junk":  # The message is the same on every call: it names the bytes, not a buffer's address.
        assert errors[0] == (UnidentifiedImageError, "cannot identify image file (19 bytes starting b'not an i'): "
                                                     "not an image format PIL reads")


def test_random_flip_array_matches_random_flip():
    image = _coordinate_image(7, 5)
    for seed in range(20):
        rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
        out = transforms.random_flip_array(np.asarray(image), rng_a)
        np.testing.assert_array_equal(out, np.asarray(transforms.random_flip(image, rng_b)))
        assert rng_a.random() == rng_b.random()  # The same single draw.


@pytest.mark.parametrize("width, height", [(100, 50), (50, 100), (72, 72)])
def test_decode_center_crop_geometry(width, height):
    data = _encode(_coordinate_image(width, height), "PNG")
    fast = transforms.decode_center_crop(transforms.open_image(data), data, 32).astype(np.float64)
    reference = np.asarray(transforms.center_crop_eval(transforms.decode_image(data), 32), np.float64)
    assert fast.shape == (32, 32, 3)
    np.testing.assert_allclose(fast.mean(axis=(0, 1)), reference.mean(axis=(0, 1)), atol=0.3)
    assert np.abs(fast - reference).mean() < 1.0


def test_decode_center_crop_matches_pil_on_texture():
    data = _textured_jpeg()
    for size in (224, 96):  # 96: int(96 / 0.875) = 109 px, a 1/2-scale decode (375 // 109 = 3).
        fast = transforms.decode_center_crop(transforms.open_image(data), data, size)
        reference = transforms.decode_center_crop(transforms.open_image(data), data, size, use_opencv=False)
        assert np.abs(fast.astype(np.float64) - reference).mean() < 2.0  # Measured 0.8 (224), 1.54 (96).


def test_normalize_host_matches_normalize():
    images = np.random.default_rng(0).integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    out = transforms.normalize_host(images)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out, np.asarray(transforms.normalize(images)), atol=1e-5)
    np.testing.assert_allclose(transforms.normalize_host(images[0]), out[0], atol=0)
    np.testing.assert_allclose(transforms.normalize_host(np.zeros((1, 1, 3), np.uint8))[0, 0],
                               [-2.117904, -2.035714, -1.804444], atol=1e-5)
    with pytest.raises(ValueError, match="normalize_host: expected uint8"):
        transforms.normalize_host(images.astype(np.float32))
