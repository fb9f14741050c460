"""Image transforms: decoding, host-side augmentation, device-side normalization.

Images leave the host as uint8 HWC RGB arrays; `normalize` turns them into float32 on device.
The fast path decodes and resizes with OpenCV (libjpeg-turbo reduced-scale JPEG decoding, SIMD
resizing); PIL is the reference and the fallback for anything OpenCV is not trusted to decode the
way PIL does (CMYK, palette, alpha, 16-bit, truncated files, formats other than JPEG/PNG).
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    import jax

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CropBox = tuple[int, int, int, int]  # (left, top, width, height) in pixels.

# One OpenCV thread per process: grain worker processes already spread images over the cores, and
# no thread pool is created that a forked worker could inherit.
cv2.setNumThreads(0)

_RGB_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION  # PIL's Image.open ignores EXIF too.
_REDUCED_FLAGS = {1: 0, 2: cv2.IMREAD_REDUCED_COLOR_2 & ~cv2.IMREAD_COLOR,
                  4: cv2.IMREAD_REDUCED_COLOR_4 & ~cv2.IMREAD_COLOR,
                  8: cv2.IMREAD_REDUCED_COLOR_8 & ~cv2.IMREAD_COLOR}
_OPENCV_MODES = {"JPEG": ("RGB", "L"), "PNG": ("RGB", "L")}  # PIL format -> modes OpenCV decodes alike.
_JPEG_END = b"\xff\xd9"
# Shrinking by more than this on an axis gets a Gaussian pre-blur (sigma = 0.5 sqrt(f^2 - 1)) so the bicubic
# resize does not alias; with it the result is within ~1 uint8 level of PIL's antialiased bicubic.
_BLUR_ABOVE = 1.25
_EPS = 1e-6


def decode_image(image_bytes: bytes) -> Image.Image:
    """Decodes JPEG/PNG/... bytes into an RGB PIL image (grayscale, CMYK, palette, alpha converted)."""
    return to_rgb(open_image(image_bytes))


def open_image(image_bytes: bytes) -> Image.Image:
    """Opens encoded image bytes lazily: size and mode are known, pixels are decoded on first use.

    Bytes PIL cannot identify raise `PIL.UnidentifiedImageError` whose message names their length and first
    bytes (PIL's own names the address of a temporary buffer, which differs from call to call).
    """
    try:
        return Image.open(io.BytesIO(image_bytes))
    except UnidentifiedImageError:
        raise UnidentifiedImageError(f"cannot identify image file ({len(image_bytes)} bytes starting "
                                     f"{bytes(image_bytes[:8])!r}): not an image format PIL reads") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """The image in RGB mode (decodes it; grayscale, CMYK, palette, alpha converted)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def draft_for_crop(image: Image.Image, box: CropBox, size: int) -> tuple[Image.Image, tuple[float, ...]]:
    """Lets a JPEG decode at 1/2, 1/4 or 1/8 scale when `box` still covers >= `size` px after it.

    Call before the image is decoded. Returns the image and the crop box as (left, top, right,
    bottom) in the coordinates of the (possibly reduced) image. The crop is then only ever
    downsampled, never upsampled; non-JPEG images are returned unchanged.
    """
    left, top, w, h = box
    factor = min(w, h) // size
    scale = 1.0
    if factor >= 2 and image.format == "JPEG":
        full_width = image.width
        drafted = image.draft(None, (max(1, image.width // factor), max(1, image.height // factor)))
        if drafted is not None:  # (mode, (0, 0, width / s, height / s)) for a 1/s-scale decode
            scale = drafted[1][2] / full_width
    return image, (left * scale, top * scale, (left + w) * scale, (top + h) * scale)


def draft_for_resize(image: Image.Image, min_short_side: int) -> Image.Image:
    """Lets a JPEG decode at reduced scale while its shorter side stays >= `min_short_side` px."""
    factor = min(image.size) // max(1, min_short_side)
    if factor >= 2 and image.format == "JPEG":
        image.draft(None, (max(1, image.width // factor), max(1, image.height // factor)))
    return image


def resized_crop(image: Image.Image, box: tuple[float, ...], size: int) -> Image.Image:
    """Crops `box` (left, top, right, bottom) and resizes it to `size` x `size`, bicubic."""
    return image.resize((size, size), Image.BICUBIC, box=box)


def sample_crop_box(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> CropBox:
    """Samples a RandomResizedCrop box exactly as torchvision's `get_params` does.

    Up to 10 tries: area fraction ~ U(scale), aspect ratio w/h log-uniform in `ratio`; the first box
    that fits is placed uniformly at random. Otherwise: a centre crop of the whole image with its
    aspect ratio clamped into `ratio`.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    return _fallback_crop_box(width, height, ratio)


def _fallback_crop_box(width: int, height: int, ratio: tuple[float, float]) -> CropBox:
    """The centred, largest box whose aspect ratio is the image's clamped into `ratio`."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(
    img: Image.Image,
    size: int,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    rng: np.random.Generator,
) -> Image.Image:
    """Crops a random box (see `sample_crop_box`) and resizes it to `size` x `size`, bicubic."""
    left, top, w, h = sample_crop_box(img.width, img.height, scale, ratio, rng)
    return img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))


def draft_scale(width: int, height: int, factor: int) -> int:
    """The s in {1, 2, 4, 8} PIL's JPEG `draft` picks when asked for (width // factor, height // factor)."""
    if factor < 2:
        return 1
    scale = min(width // max(1, width // factor), height // max(1, height // factor))
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def crop_draft_scale(image: Image.Image, box: CropBox, size: int) -> int:
    """The JPEG decode reduction `draft_for_crop` applies for `box` (1 for non-JPEG images)."""
    factor = min(box[2], box[3]) // size
    return draft_scale(image.width, image.height, factor) if image.format == "JPEG" else 1


def resize_draft_scale(image: Image.Image, min_short_side: int) -> int:
    """The JPEG decode reduction `draft_for_resize` applies (1 for non-JPEG images)."""
    factor = min(image.size) // max(1, min_short_side)
    return draft_scale(image.width, image.height, factor) if image.format == "JPEG" else 1


def opencv_decodable(image: Image.Image, image_bytes: bytes) -> bool:
    """Whether OpenCV decodes these bytes to the pixels PIL's RGB conversion gives.

    True for 8-bit RGB or grayscale JPEG/PNG; JPEGs must also end with the end-of-image marker, so a
    truncated file takes the PIL path and raises there as before (libjpeg only warns).
    """
    if image.mode not in _OPENCV_MODES.get(image.format or "", ()):
        return False
    return image.format != "JPEG" or image_bytes.endswith(_JPEG_END)


def decode_array(image_bytes: bytes, scale: int = 1) -> np.ndarray | None:
    """Decodes to a uint8 HWC RGB array with OpenCV at 1/`scale` size (JPEG only); None if it cannot."""
    flags = _RGB_FLAGS | _REDUCED_FLAGS[scale]
    return cv2.imdecode(np.frombuffer(image_bytes, np.uint8), flags)


def _decoded_as_expected(pixels: np.ndarray | None, image: Image.Image, scale: int) -> bool:
    """Whether OpenCV decoded `image` to ceil(size / scale) RGB pixels (else PIL decodes it)."""
    expected = (-(-image.height // scale), -(-image.width // scale), 3)
    return pixels is not None and pixels.shape == expected and pixels.dtype == np.uint8


def resize_array(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resizes a uint8 HWC array to `width` x `height`: bicubic, antialiased when shrinking."""
    in_height, in_width = pixels.shape[:2]
    return _resample(pixels, 0.0, 0.0, in_width / width, in_height / height, width, height)


def resized_crop_array(pixels: np.ndarray, box: tuple[float, ...], size: int) -> np.ndarray:
    """Crops `box` (left, top, right, bottom; sub-pixel exact) and resizes it to `size` x `size`.

    Like PIL's `resize(box=...)`: output pixel centre i maps to left + (i + 0.5) * (right - left) / size.
    A fractional left/top edge (a reduced-scale JPEG decode) is a 4-tap cubic shift folded into the
    antialiasing filter; only pixels of the box's whole-pixel hull are read (edges replicate).
    """
    left, top, right, bottom = box
    x0, y0 = math.floor(left), math.floor(top)
    region = pixels[y0:math.ceil(bottom - _EPS), x0:math.ceil(right - _EPS)]
    whole = all(abs(v - round(v)) < _EPS for v in box)
    return _resample(region, left - x0, top - y0, (right - left) / size, (bottom - top) / size, size, size,
                     whole)


def _resample(region: np.ndarray, dx: float, dy: float, fx: float, fy: float, width: int,
              height: int, whole: bool = True) -> np.ndarray:
    """Output pixel (i, j) samples `region` at ((j + 0.5) fx - 0.5 + dx, (i + 0.5) fy - 0.5 + dy).

    `whole`: the region is exactly the area to resample (else it is wider or taller: fractional box).
    """
    if whole and fx >= 2 and fy >= 2:
        return cv2.resize(region, (width, height), interpolation=cv2.INTER_AREA)  # Area average: antialiased.
    kx, ax = _axis_kernel(dx, fx)
    ky, ay = _axis_kernel(dy, fy)
    if len(kx) > 1 or len(ky) > 1:
        region = cv2.sepFilter2D(region, -1, kx, ky, anchor=(ax, ay), borderType=cv2.BORDER_REFLECT_101)
    if whole:
        return cv2.resize(region, (width, height), interpolation=cv2.INTER_CUBIC)
    # With explicit fx/fy OpenCV keeps the exact scale; the hull is wider than the box: crop the excess.
    return cv2.resize(region, None, fx=1 / fx, fy=1 / fy, interpolation=cv2.INTER_CUBIC)[:height, :width]


def _axis_kernel(shift: float, factor: float) -> tuple[np.ndarray, int]:
    """1-D filter (and its anchor) that shifts by `shift` px (cubic, a = -0.5 as PIL) and, when shrinking
    by `factor` > 1.25, low-passes with a Gaussian of sigma 0.5 sqrt(factor^2 - 1)."""
    kernel, anchor = np.ones(1), 0
    if shift > _EPS:
        kernel, anchor = np.array([_cubic(shift + 1), _cubic(shift), _cubic(1 - shift), _cubic(2 - shift)]), 1
    if factor > _BLUR_ABOVE:
        sigma = 0.5 * math.sqrt(factor * factor - 1)
        gaussian = cv2.getGaussianKernel(2 * math.ceil(3 * sigma) + 1, sigma).ravel()
        kernel, anchor = np.convolve(gaussian, kernel), anchor + len(gaussian) // 2
    return kernel, anchor


def _cubic(t: float, a: float = -0.5) -> float:
    """The bicubic convolution kernel (Keys; PIL uses a = -0.5)."""
    t = abs(t)
    if t <= 1:
        return ((a + 2) * t - (a + 3)) * t * t + 1
    return (((t - 5) * t + 8) * t - 4) * a if t < 2 else 0.0


def decode_resized_crop(image: Image.Image, image_bytes: bytes, box: CropBox, size: int,
                        use_opencv: bool = True) -> np.ndarray:
    """Decodes the `box` region of `image` (opened from `image_bytes`) as a `size` x `size` uint8 RGB array.

    JPEGs decode at 1/2, 1/4 or 1/8 scale when the box still covers >= `size` px after it (as
    `draft_for_crop`). OpenCV decodes and resizes when it can (`opencv_decodable`), else PIL does.
    """
    if use_opencv and opencv_decodable(image, image_bytes):
        scale = crop_draft_scale(image, box, size)
        pixels = decode_array(image_bytes, scale)
        if _decoded_as_expected(pixels, image, scale):
            left, top, w, h = box
            return resized_crop_array(pixels, (left / scale, top / scale, (left + w) / scale,
                                               (top + h) / scale), size)
    image, scaled_box = draft_for_crop(image, box, size)
    return to_uint8_array(resized_crop(to_rgb(image), scaled_box, size))


def decode_center_crop(image: Image.Image, image_bytes: bytes, size: int, crop_pct: float = 0.875,
                       use_opencv: bool = True) -> np.ndarray:
    """`center_crop_eval` of `image` (opened from `image_bytes`) as a uint8 RGB array, decoded at reduced
    scale when the resize allows; OpenCV when it can (`opencv_decodable`), else PIL."""
    short = int(size / crop_pct)
    if use_opencv and opencv_decodable(image, image_bytes):
        scale = resize_draft_scale(image, short)
        pixels = decode_array(image_bytes, scale)
        if _decoded_as_expected(pixels, image, scale):
            height, width = pixels.shape[:2]
            new_w, new_h = _short_side_size(width, height, short)
            left, top = round((new_w - size) / 2), round((new_h - size) / 2)
            return np.ascontiguousarray(resize_array(pixels, new_w, new_h)[top:top + size, left:left + size])
    image = to_rgb(draft_for_resize(image, short))
    return to_uint8_array(center_crop_eval(image, size, crop_pct))


def random_flip_array(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips a HWC array left-right with probability 0.5 (one rng.random() draw, as `random_flip`)."""
    return cv2.flip(pixels, 1) if rng.random() < 0.5 else pixels


def random_flip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Flips left-right with probability 0.5 (one rng.random() draw)."""
    if rng.random() < 0.5:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def center_crop_eval(img: Image.Image, size: int, crop_pct: float = 0.875) -> Image.Image:
    """Resizes the shorter side to int(size / crop_pct) (bicubic), then centre-crops size x size."""
    new_w, new_h = _short_side_size(img.width, img.height, int(size / crop_pct))
    resized = img.resize((new_w, new_h), Image.BICUBIC)
    left = int(round((new_w - size) / 2))
    top = int(round((new_h - size) / 2))
    return resized.crop((left, top, left + size, top + size))


def _short_side_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) scaled so that the shorter side is `short` (the other side truncated)."""
    if width <= height:
        return short, int(short * height / width)
    return int(short * width / height), short


def to_uint8_array(img: Image.Image) -> np.ndarray:
    """An RGB PIL image as a uint8 HWC array."""
    return np.asarray(img, dtype=np.uint8)


def normalize(images: jax.typing.ArrayLike) -> jax.Array:
    """(images / 255 - IMAGENET_MEAN) / IMAGENET_STD as float32; works on uint8/float, inside jit."""
    import jax.numpy as jnp  # Lazy: host-side worker processes never need JAX.

    mean = jnp.asarray(IMAGENET_MEAN, dtype=jnp.float32)
    std = jnp.asarray(IMAGENET_STD, dtype=jnp.float32)
    return (jnp.asarray(images).astype(jnp.float32) / 255.0 - mean) / std


# (v - 255 * mean_c) / (255 * std_c) = a_c * v + b_c: one fused per-channel affine map in OpenCV.
_NORMALIZE_AFFINE = np.concatenate(
    [np.diag(1 / (255 * np.array(IMAGENET_STD))), -(np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD))[:, None]],
    axis=1).astype(np.float32)


def normalize_host(images: np.ndarray) -> np.ndarray:
    """`normalize` on the host for uint8 [..., H, W, 3] arrays: float32, ~0.1 ms per 224-px image."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(f"normalize_host: expected uint8 [..., H, W, 3], got {images.dtype} {images.shape}.")
    flat = np.ascontiguousarray(images).reshape(-1, images.shape[-2], 3).astype(np.float32)
    return cv2.transform(flat, _NORMALIZE_AFFINE).reshape(images.shape)
