"""RandAugment (Cubuk et al. 2020) with timm's semantics, on PIL images in the host pipeline.

The spec is timm's `--aa` string: `rand` then dash-separated sections, e.g. `rand-m9-mstd0.5-inc1` (the MAE
fine-tuning recipe): magnitude `m` (0..10, default 10), `n` ops per image (default 2), Gaussian magnitude noise
`mstd` (> 100: uniform in [0, m]), `mmax` (magnitude clip, default 10), `inc1` (the increasing-severity op list).
Per image, `n` ops are drawn uniformly with replacement; each is applied with probability 0.5 at a magnitude
drawn per op and clipped to [0, mmax]. Signed ops (rotate, shear, translate, increasing enhance) flip their sign
with probability 0.5. Geometric ops resample bicubic (MAE passes interpolation='bicubic') and fill with the
ImageNet mean (124, 116, 104). Every draw comes from the numpy Generator passed in, so an example's
augmentation depends only on that generator's seed.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from mim_jax.data.transforms import IMAGENET_MEAN
from mim_jax.errors import ConfigError

FILL = tuple(min(255, round(255 * c)) for c in IMAGENET_MEAN)  # (124, 116, 104), as timm derives it
LEVEL_DENOM = 10.0
EXAMPLE = "rand-m9-mstd0.5-inc1"


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
    """Parsed RandAugment settings (timm's defaults: m10, n2, no noise, mmax 10, non-increasing ops)."""

    magnitude: float = 10.0
    num_ops: int = 2
    magnitude_std: float = 0.0
    magnitude_max: float = 10.0
    increasing: bool = False
    prob: float = 0.5


# --------------------------------------------------------------------------- parsing

def _bad(field: str, spec: str, why: str) -> ConfigError:
    """A ConfigError naming `field`, what is wrong and the fix."""
    return ConfigError(f"{field}={spec!r}: {why}; use a timm RandAugment string such as {EXAMPLE!r} "
                       f"(sections m<magnitude>, n<ops>, mstd<std>, mmax<max>, inc<0|1>) or '' for none")


def parse_spec(spec: str, field: str = "auto_augment") -> RandAugmentSpec | None:
    """Parses a timm `rand-...` string (None for ''); a bad one raises ConfigError naming `field`."""
    if not isinstance(spec, str):
        raise _bad(field, spec, "must be a string")
    if spec == "":
        return None
    head, *sections = spec.split("-")
    if head != "rand":
        raise _bad(field, spec, "only RandAugment ('rand-...') is supported")
    values: dict[str, float] = {}
    for section in sections:
        key, number = re.fullmatch(r"([a-z]*)(.*)", section, flags=re.DOTALL).groups()
        if key not in ("m", "n", "mstd", "mmax", "inc"):
            raise _bad(field, spec, f"unknown section {section!r}")
        if re.fullmatch(r"\d+(\.\d*)?", number) is None:
            raise _bad(field, spec, f"section {section!r} needs a non-negative number after {key!r}")
        value = float(number)
        if key in values:
            raise _bad(field, spec, f"section {key!r} given twice")
        if key in ("n", "inc", "mmax") and value != int(value):
            raise _bad(field, spec, f"{key} must be an integer")
        values[key] = value
    parsed = RandAugmentSpec(
        magnitude=values.get("m", LEVEL_DENOM), num_ops=int(values.get("n", 2)),
        magnitude_std=math.inf if values.get("mstd", 0.0) > 100 else values.get("mstd", 0.0),
        magnitude_max=values.get("mmax", LEVEL_DENOM), increasing=values.get("inc", 0) > 0)
    if parsed.num_ops < 1:
        raise _bad(field, spec, "n must be >= 1")
    if parsed.magnitude_max <= 0:
        raise _bad(field, spec, "mmax must be > 0")
    return parsed


# --------------------------------------------------------------------------- image ops (exact arguments)

def _affine(img: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    """Output pixel (x, y) samples input (a x + b y + c, d x + e y + f); bicubic, mean-coloured fill."""
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=FILL)


def auto_contrast(img: Image.Image, _: float = 0.0) -> Image.Image:
    """Stretches each channel to the full 0..255 range."""
    return ImageOps.autocontrast(img)


def equalize(img: Image.Image, _: float = 0.0) -> Image.Image:
    """Histogram-equalizes each channel."""
    return ImageOps.equalize(img)


def invert(img: Image.Image, _: float = 0.0) -> Image.Image:
    """255 - pixel."""
    return ImageOps.invert(img)


def rotate(img: Image.Image, degrees: float) -> Image.Image:
    """Rotates counter-clockwise by `degrees` about the centre."""
    return img.rotate(degrees, resample=Image.BICUBIC, fillcolor=FILL)


def posterize(img: Image.Image, bits: float) -> Image.Image:
    """Keeps the `bits` most significant bits of each channel (0: black; Pillow's posterize needs >= 1)."""
    bits = min(8, max(0, int(bits)))
    mask = 0xFF & ~(2 ** (8 - bits) - 1)
    return img.point([i & mask for i in range(256)] * len(img.getbands()))


def solarize(img: Image.Image, threshold: float) -> Image.Image:
    """Inverts pixels >= `threshold`."""
    return ImageOps.solarize(img, int(threshold))


def solarize_add(img: Image.Image, add: float, threshold: int = 128) -> Image.Image:
    """Adds `add` (clipped at 255) to pixels below `threshold`."""
    lut = [min(255, i + int(add)) if i < threshold else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def color(img: Image.Image, factor: float) -> Image.Image:
    """Saturation: blends with the grayscale image (factor 1 = unchanged)."""
    return ImageEnhance.Color(img).enhance(factor)


def contrast(img: Image.Image, factor: float) -> Image.Image:
    """Blends with the mean gray level (factor 1 = unchanged)."""
    return ImageEnhance.Contrast(img).enhance(factor)


def brightness(img: Image.Image, factor: float) -> Image.Image:
    """Blends with black, i.e. scales pixels by `factor` (clipped)."""
    return ImageEnhance.Brightness(img).enhance(factor)


def sharpness(img: Image.Image, factor: float) -> Image.Image:
    """Blends with a smoothed image (factor 1 = unchanged)."""
    return ImageEnhance.Sharpness(img).enhance(factor)


def shear_x(img: Image.Image, shear: float) -> Image.Image:
    """Output (x, y) samples input (x + shear * y, y)."""
    return _affine(img, (1, shear, 0, 0, 1, 0))


def shear_y(img: Image.Image, shear: float) -> Image.Image:
    """Output (x, y) samples input (x, y + shear * x)."""
    return _affine(img, (1, 0, 0, shear, 1, 0))


def translate_x(img: Image.Image, fraction: float) -> Image.Image:
    """Output (x, y) samples input (x + fraction * width, y): content moves left for fraction > 0."""
    return _affine(img, (1, 0, fraction * img.width, 0, 1, 0))


def translate_y(img: Image.Image, fraction: float) -> Image.Image:
    """Output (x, y) samples input (x, y + fraction * height): content moves up for fraction > 0."""
    return _affine(img, (1, 0, 0, 0, 1, fraction * img.height))


# --------------------------------------------------------------------------- magnitude -> argument

def _signed(value: float, rng: np.random.Generator) -> float:
    """`value` negated with probability 0.5."""
    return -value if rng.random() < 0.5 else value


def _no_arg(level: float, rng: np.random.Generator) -> float:
    """Ops without an argument."""
    return 0.0


def _rotate_arg(level: float, rng: np.random.Generator) -> float:
    """Degrees, +/- 30 * level."""
    return _signed(30.0 * level, rng)


def _shear_arg(level: float, rng: np.random.Generator) -> float:
    """Shear factor, +/- 0.3 * level."""
    return _signed(0.3 * level, rng)


def _translate_arg(level: float, rng: np.random.Generator) -> float:
    """Fraction of the image side, +/- 0.45 * level (timm's translate_pct)."""
    return _signed(0.45 * level, rng)


def _posterize_arg(level: float, rng: np.random.Generator) -> float:
    """Bits kept, int(4 * level): fewer bits (stronger) at low magnitude."""
    return float(int(4 * level))


def _posterize_increasing_arg(level: float, rng: np.random.Generator) -> float:
    """Bits kept, 4 - int(4 * level): 4 at magnitude 0 down to 0 at 10."""
    return float(4 - int(4 * level))


def _solarize_arg(level: float, rng: np.random.Generator) -> float:
    """Threshold int(256 * level): stronger at low magnitude."""
    return float(int(256 * level))


def _solarize_increasing_arg(level: float, rng: np.random.Generator) -> float:
    """Threshold 256 - int(256 * level): nothing inverted at magnitude 0, everything at 10."""
    return float(256 - int(256 * level))


def _solarize_add_arg(level: float, rng: np.random.Generator) -> float:
    """Amount added, int(110 * level)."""
    return float(int(110 * level))


def _enhance_arg(level: float, rng: np.random.Generator) -> float:
    """Enhance factor 0.1 + 1.8 * level."""
    return 0.1 + 1.8 * level


def _enhance_increasing_arg(level: float, rng: np.random.Generator) -> float:
    """Enhance factor 1 +/- 0.9 * level, at least 0.1."""
    return max(0.1, 1.0 + _signed(0.9 * level, rng))


Op = tuple[Callable[[Image.Image, float], Image.Image], Callable[[float, np.random.Generator], float]]

OPS: dict[str, Op] = {
    "AutoContrast": (auto_contrast, _no_arg),
    "Equalize": (equalize, _no_arg),
    "Invert": (invert, _no_arg),
    "Rotate": (rotate, _rotate_arg),
    "Posterize": (posterize, _posterize_arg),
    "PosterizeIncreasing": (posterize, _posterize_increasing_arg),
    "Solarize": (solarize, _solarize_arg),
    "SolarizeIncreasing": (solarize, _solarize_increasing_arg),
    "SolarizeAdd": (solarize_add, _solarize_add_arg),
    "Color": (color, _enhance_arg),
    "ColorIncreasing": (color, _enhance_increasing_arg),
    "Contrast": (contrast, _enhance_arg),
    "ContrastIncreasing": (contrast, _enhance_increasing_arg),
    "Brightness": (brightness, _enhance_arg),
    "BrightnessIncreasing": (brightness, _enhance_increasing_arg),
    "Sharpness": (sharpness, _enhance_arg),
    "SharpnessIncreasing": (sharpness, _enhance_increasing_arg),
    "ShearX": (shear_x, _shear_arg),
    "ShearY": (shear_y, _shear_arg),
    "TranslateXRel": (translate_x, _translate_arg),
    "TranslateYRel": (translate_y, _translate_arg),
}

_SHARED = ("AutoContrast", "Equalize", "Invert", "Rotate")
_GEOMETRIC = ("ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_OPS = (*_SHARED, "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness",
            *_GEOMETRIC)  # timm _RAND_TRANSFORMS
RAND_INCREASING_OPS = (*_SHARED, "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing",
                       "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
                       *_GEOMETRIC)  # timm _RAND_INCREASING_TRANSFORMS


# --------------------------------------------------------------------------- sampling

def op_names(spec: RandAugmentSpec) -> tuple[str, ...]:
    """The ops RandAugment chooses from under `spec`."""
    return RAND_INCREASING_OPS if spec.increasing else RAND_OPS


def sample_magnitude(spec: RandAugmentSpec, rng: np.random.Generator) -> float:
    """One op's magnitude: m, m + N(0, mstd), or U(0, m) when mstd is inf; clipped to [0, mmax]."""
    magnitude = spec.magnitude
    if math.isinf(spec.magnitude_std):
        magnitude = rng.uniform(0.0, magnitude)
    elif spec.magnitude_std > 0:
        magnitude = rng.normal(magnitude, spec.magnitude_std)
    return float(min(max(magnitude, 0.0), spec.magnitude_max))


def apply_op(img: Image.Image, name: str, magnitude: float, rng: np.random.Generator) -> Image.Image:
    """Applies op `name` at `magnitude` (0..10 scale); `rng` draws the sign of signed ops."""
    fn, to_arg = OPS[name]
    return fn(img, to_arg(magnitude / LEVEL_DENOM, rng))


def rand_augment(img: Image.Image, spec: RandAugmentSpec, rng: np.random.Generator) -> Image.Image:
    """Applies `spec.num_ops` ops drawn uniformly with replacement, each with probability `spec.prob`."""
    names = op_names(spec)
    for index in rng.integers(0, len(names), size=spec.num_ops):
        if rng.random() < spec.prob:
            img = apply_op(img, names[index], sample_magnitude(spec, rng), rng)
    return img


def rand_augment_array(pixels: np.ndarray, spec: RandAugmentSpec, rng: np.random.Generator) -> np.ndarray:
    """`rand_augment` on a uint8 HWC RGB array (the train pipeline's form) -> uint8 HWC array."""
    return np.asarray(rand_augment(Image.fromarray(pixels), spec, rng), dtype=np.uint8)
