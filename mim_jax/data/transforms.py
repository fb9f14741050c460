"""Image transforms: decoding, host-side augmentation on PIL images, device-side normalization.

Images leave the host as uint8 HWC arrays; `normalize` turns them into float32 on device.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import jax

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CropBox = tuple[int, int, int, int]  # (left, top, width, height) in pixels.


def decode_image(image_bytes: bytes) -> Image.Image:
    """Decodes JPEG/PNG/... bytes into an RGB PIL image (grayscale, CMYK, palette, alpha converted)."""
    return to_rgb(open_image(image_bytes))


def open_image(image_bytes: bytes) -> Image.Image:
    """Opens encoded image bytes lazily: size and mode are known, pixels are decoded on first use."""
    return Image.open(io.BytesIO(image_bytes))


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


def random_flip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Flips left-right with probability 0.5 (one rng.random() draw)."""
    if rng.random() < 0.5:
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def center_crop_eval(img: Image.Image, size: int, crop_pct: float = 0.875) -> Image.Image:
    """Resizes the shorter side to int(size / crop_pct) (bicubic), then centre-crops size x size."""
    short = int(size / crop_pct)
    if img.width <= img.height:
        new_w, new_h = short, int(short * img.height / img.width)
    else:
        new_w, new_h = int(short * img.width / img.height), short
    resized = img.resize((new_w, new_h), Image.BICUBIC)
    left = int(round((new_w - size) / 2))
    top = int(round((new_h - size) / 2))
    return resized.crop((left, top, left + size, top + size))


def to_uint8_array(img: Image.Image) -> np.ndarray:
    """An RGB PIL image as a uint8 HWC array."""
    return np.asarray(img, dtype=np.uint8)


def normalize(images: jax.typing.ArrayLike) -> jax.Array:
    """(images / 255 - IMAGENET_MEAN) / IMAGENET_STD as float32; works on uint8/float, inside jit."""
    import jax.numpy as jnp  # Lazy: host-side worker processes never need JAX.

    mean = jnp.asarray(IMAGENET_MEAN, dtype=jnp.float32)
    std = jnp.asarray(IMAGENET_STD, dtype=jnp.float32)
    return (jnp.asarray(images).astype(jnp.float32) / 255.0 - mean) / std
