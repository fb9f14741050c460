"""The embedded default dataset "shapes": procedurally drawn, labelled 10-class images.

Each image shows one shape of its class (random colour, position, size, a tilt of up to 15 degrees) on a random
background (a colour gradient blended with low-frequency colour noise), with a few small clutter
marks (lines, dots, short squiggles) that belong to no class. Drawn at 2x and box-downsampled for
antialiasing, stored as JPEG. Image i of split s depends only on (seed, s, i).

Multi-label variant (``multi_label=True``, for weakly supervised pretraining): each train image shows
1 to `MAX_SHAPES` shapes of distinct families, one per cell of a 2 x 2 grid (each drawn like a single
shape scaled to its cell), and its label set is the families present with tag noise, like web hashtags:
each true tag is dropped with probability `TAG_DROP_RATE` (an image may end up unlabeled), and with
probability `TAG_ADD_RATE` one wrong family is added; the set is stored in random order. Its val split
is single-label and byte for byte the standard dataset's val split of the same seed and size, so the
probe, kNN and few-shot evaluate on it as on the standard dataset.

CLI: ``python -m mim_jax.data.synthetic --out=DIR [--num_train=20000 --num_val=2500 --seed=0] [--multi_label]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import multiprocessing.pool
import os
import shutil
import time
import uuid
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

from mim_jax.data import records

GENERATOR = "mim_jax.data.synthetic"
GENERATOR_VERSION = 2  # Bump when drawing changes: it invalidates cached datasets.
CLASSES = (
    "circle", "square", "triangle", "star", "cross",
    "ring", "ellipse", "hexagon", "crescent", "arrow",
)
SPLIT_IDS = {"train": 0, "val": 1}
JPEG_QUALITY = 90
MAX_SHAPES = 3          # multi-label train images show 1..MAX_SHAPES shapes (uniform), of distinct families
TAG_DROP_RATE = 0.1     # each true tag is dropped with this probability
TAG_ADD_RATE = 0.1      # with this probability one wrong family is added to the tags
_MULTI_LABEL_STREAM = 7  # keys the random stream of multi-label images apart from single-label ones
# Shapes keep a canonical orientation up to this tilt (radians), so that shape families differ in their
# edges' directions as well as in their outlines.
MAX_TILT = math.radians(15)
_BACKGROUND_RES = 32  # The smooth background is drawn at this resolution, then upsampled.
_PARALLEL_MIN_EXAMPLES = 2000  # Below this, drawing in-process beats starting worker processes.
_Points = list[tuple[float, float]]


# ----------------------------------------------------------------------------- geometry


def _regular_polygon(n: int, radius: float, phase: float = 0.0) -> _Points:
    """Vertices of a regular n-gon centred at the origin."""
    return [
        (radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star(r: float) -> _Points:
    """Five-pointed star with inner radius 0.42 r."""
    return [
        ((r if k % 2 == 0 else 0.42 * r) * math.cos(math.pi * k / 5 - math.pi / 2),
         (r if k % 2 == 0 else 0.42 * r) * math.sin(math.pi * k / 5 - math.pi / 2))
        for k in range(10)
    ]


def _cross(r: float) -> _Points:
    """Plus sign with arm half-width 0.3 r reaching out to r."""
    w = 0.3 * r
    return [(w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r),
            (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w), (-w, -r)]


def _arrow(r: float) -> _Points:
    """Arrow pointing along +x: a shaft and a triangular head."""
    unit = [(-1.0, -0.2), (0.15, -0.2), (0.15, -0.6), (1.0, 0.0), (0.15, 0.6), (0.15, 0.2), (-1.0, 0.2)]
    return [(r * x, r * y) for x, y in unit]


def _ellipse(r: float, aspect: float) -> _Points:
    """Ellipse with semi-axes r and aspect * r, as a 48-gon."""
    return [(r * math.cos(t), aspect * r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 48, endpoint=False)]


def _place(points: _Points, center: tuple[float, float], angle: float) -> _Points:
    """Rotates points by `angle` about the origin and moves the origin to `center`."""
    c, s = math.cos(angle), math.sin(angle)
    return [(center[0] + c * x - s * y, center[1] + s * x + c * y) for x, y in points]


def _disk(center: tuple[float, float], r: float) -> list[float]:
    """Bounding box of a circle for ImageDraw.ellipse."""
    return [center[0] - r, center[1] - r, center[0] + r, center[1] + r]


def _shape_mask(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """Draws the class-`label` shape as a binary 'L' mask of `size` x `size` pixels."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    r = size * rng.uniform(0.2, 0.34)
    center = (rng.uniform(0.9 * r, size - 0.9 * r), rng.uniform(0.9 * r, size - 0.9 * r))
    angle = rng.uniform(-MAX_TILT, MAX_TILT)
    name = CLASSES[label]
    if name == "circle":
        draw.ellipse(_disk(center, r), fill=255)
    elif name == "ring":
        draw.ellipse(_disk(center, r), fill=255)
        draw.ellipse(_disk(center, r * rng.uniform(0.55, 0.7)), fill=0)
    elif name == "crescent":
        draw.ellipse(_disk(center, r), fill=255)
        offset = r * rng.uniform(0.35, 0.5)
        draw.ellipse(_disk((center[0] + offset * math.cos(angle), center[1] + offset * math.sin(angle)),
                           r * 0.9), fill=0)
    else:
        polygon = {
            "square": lambda: _regular_polygon(4, r * 0.95),
            "triangle": lambda: _regular_polygon(3, r),
            "star": lambda: _star(r),
            "cross": lambda: _cross(r),
            "ellipse": lambda: _ellipse(r, rng.uniform(0.4, 0.6)),
            "hexagon": lambda: _regular_polygon(6, r),
            "arrow": lambda: _arrow(r),
        }[name]()
        draw.polygon(_place(polygon, center, angle), fill=255)
    return mask


# ----------------------------------------------------------------------------- appearance


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random colour gradient blended with low-frequency colour noise, uint8 HWC."""
    c1, c2 = rng.uniform(0, 255, size=(2, 3))
    theta = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:_BACKGROUND_RES, 0:_BACKGROUND_RES] / _BACKGROUND_RES - 0.5
    t = np.clip(xs * math.cos(theta) + ys * math.sin(theta) + 0.5, 0, 1)[..., None]
    gradient = c1 + (c2 - c1) * t
    grid = int(rng.integers(3, 6))
    noise_small = Image.fromarray(rng.integers(0, 256, size=(grid, grid, 3), dtype=np.uint8))
    noise = np.asarray(noise_small.resize((_BACKGROUND_RES,) * 2, Image.BICUBIC), dtype=np.float32)
    alpha = rng.uniform(0.2, 0.6)
    low_res = ((1 - alpha) * gradient + alpha * noise).round().astype(np.uint8)
    # Everything in the background is smooth, so it is drawn at low resolution and upsampled.
    return np.asarray(Image.fromarray(low_res).resize((size, size), Image.BILINEAR))


def _contrasting_colour(reference: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """A random RGB colour at least ~120 away (L2) from `reference`, when one is found in 20 tries."""
    colour = rng.integers(0, 256, size=3)
    for _ in range(20):
        if np.linalg.norm(colour - reference) >= 120:
            break
        colour = rng.integers(0, 256, size=3)
    return tuple(int(c) for c in colour)


def _draw_clutter(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator) -> None:
    """Draws one small mark that belongs to no class: a line, a dot or a short squiggle."""
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    x, y = rng.uniform(0, size, size=2)
    kind = rng.integers(3)
    if kind == 0:
        length, a = rng.uniform(0.08, 0.25) * size, rng.uniform(0, 2 * math.pi)
        draw.line([(x, y), (x + length * math.cos(a), y + length * math.sin(a))],
                  fill=colour, width=int(rng.integers(2, 5)))
    elif kind == 1:
        draw.ellipse(_disk((x, y), rng.uniform(0.01, 0.035) * size), fill=colour)
    else:
        steps = rng.normal(0, 0.06 * size, size=(int(rng.integers(3, 5)), 2))
        points = [(float(px), float(py)) for px, py in np.cumsum(steps, axis=0) + (x, y)]
        draw.line(points, fill=colour, width=2)


def draw_image(label: int, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draws one RGB `image_size`-px image of class `label` (at 2x, then box-downsampled)."""
    size = 2 * image_size
    background = _background(size, rng)
    mask = _shape_mask(label, size, rng)
    inside = np.asarray(mask) > 0
    colour = _contrasting_colour(background[inside].mean(axis=0), rng)
    image = Image.fromarray(background)
    clutter_before, clutter_after = rng.integers(0, 3, size=2)
    draw = ImageDraw.Draw(image)
    for _ in range(clutter_before):
        _draw_clutter(draw, size, rng)
    image.paste(colour, mask=mask)
    for _ in range(clutter_after + 1):
        _draw_clutter(draw, size, rng)
    return image.reduce(2)


def draw_multi_shape_image(labels: list[int], image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draws one RGB image with a shape of each family in `labels`, each in its own cell of a 2 x 2 grid."""
    size = 2 * image_size
    background = _background(size, rng)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 3)):
        _draw_clutter(draw, size, rng)
    cell = size // 2
    for label, slot in zip(labels, rng.permutation(4)[:len(labels)]):
        x, y = (slot % 2) * cell, (slot // 2) * cell
        mask = _shape_mask(label, cell, rng)
        under = background[y:y + cell, x:x + cell][np.asarray(mask) > 0]
        image.paste(_contrasting_colour(under.mean(axis=0), rng), (x, y, x + cell, y + cell), mask=mask)
    for _ in range(rng.integers(0, 2)):
        _draw_clutter(draw, size, rng)
    return image.reduce(2)


def noisy_tags(families: list[int], rng: np.random.Generator, drop_rate: float = TAG_DROP_RATE,
               add_rate: float = TAG_ADD_RATE) -> list[int]:
    """The families present, each dropped with `drop_rate`, plus one absent family with `add_rate`, shuffled."""
    tags = [f for f in families if rng.random() >= drop_rate]
    if rng.random() < add_rate:
        absent = [c for c in range(len(CLASSES)) if c not in families]
        tags.append(int(absent[rng.integers(len(absent))]))
    return [int(tags[i]) for i in rng.permutation(len(tags))]


def make_multi_label_example(seed: int, split: str, index: int, image_size: int) -> tuple[bytes, list[int], str]:
    """Returns (jpeg_bytes, noisy tags, key) of multi-label image `index`; depends only on the arguments."""
    rng = np.random.default_rng([seed, split_id(split), index, _MULTI_LABEL_STREAM])
    count = int(rng.integers(1, MAX_SHAPES + 1))
    families = [int(f) for f in rng.choice(len(CLASSES), size=count, replace=False)]
    image = draw_multi_shape_image(families, image_size, rng)
    return encode_jpeg(image), noisy_tags(families, rng), f"shapes_ml/{split}/{index:06d}"


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """Encodes an RGB image as JPEG bytes (4:4:4 chroma, so small shapes keep their colour)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def make_example(seed: int, split: str, index: int, image_size: int) -> tuple[bytes, int, str]:
    """Returns (jpeg_bytes, label, key) of image `index` of `split`; depends only on the arguments."""
    rng = np.random.default_rng([seed, split_id(split), index])
    label = index % len(CLASSES)  # Exactly balanced classes.
    image = draw_image(label, image_size, rng)
    return encode_jpeg(image), label, f"shapes/{split}/{index:06d}"


def _make_example_star(args: tuple[int, str, int, int, bool]) -> tuple[bytes, int | list[int], str]:
    """`make_example` (or `make_multi_label_example` when the last item is True) taking one tuple, for Pool.imap."""
    *example_args, multi_label = args
    return make_multi_label_example(*example_args) if multi_label else make_example(*example_args)


def split_id(split: str) -> int:
    """The integer that keys the random stream of `split`."""
    if split not in SPLIT_IDS:
        raise ValueError(f"Unknown synthetic split {split!r}; known splits: {sorted(SPLIT_IDS)}.")
    return SPLIT_IDS[split]


# ----------------------------------------------------------------------------- writing


def _examples(
    split: str, num: int, image_size: int, seed: int, pool: multiprocessing.pool.Pool | None,
    multi_label: bool = False,
) -> Iterator[tuple[bytes, int | list[int], str]]:
    """Yields the examples of a split in index order, drawn by `pool` when given."""
    args = ((seed, split, i, image_size, multi_label) for i in range(num))
    if pool is None:
        return map(_make_example_star, args)
    return pool.imap(_make_example_star, args, chunksize=64)


def _params(num_train: int, num_val: int, image_size: int, seed: int, multi_label: bool = False) -> dict:
    """The parameters that determine a generated dataset's contents (the multi-label ones only when set)."""
    multi = {"multi_label": True, "max_shapes": MAX_SHAPES, "tag_drop_rate": TAG_DROP_RATE,
             "tag_add_rate": TAG_ADD_RATE} if multi_label else {}
    return {**multi,
        "generator": GENERATOR,
        "generator_version": GENERATOR_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": int(image_size),
        "seed": int(seed),
        "jpeg_quality": JPEG_QUALITY,
    }


def _write_dataset(out_dir: str, params: dict, num_shards: int, num_workers: int) -> None:
    """Writes every split, then metadata.json, into `out_dir`."""
    sizes = {"train": params["num_train"], "val": params["num_val"]}
    use_pool = num_workers > 1 and sum(sizes.values()) >= _PARALLEL_MIN_EXAMPLES
    # spawn, not fork: the caller may have started JAX's threads.
    with (multiprocessing.get_context("spawn").Pool(num_workers) if use_pool
          else contextlib.nullcontext()) as pool:
        multi_label = params.get("multi_label", False)
        splits = {
            split: records.write_split(
                out_dir, split, _examples(split, n, params["image_size"], params["seed"], pool,
                                          multi_label and split == "train"),
                num_shards, num_classes=len(CLASSES))
            for split, n in sizes.items()
        }
    records.write_metadata(out_dir, list(CLASSES), splits, params)


def generate(
    out_dir: str,
    num_train: int = 20000,
    num_val: int = 2500,
    image_size: int = 72,
    seed: int = 0,
    num_shards: int = 4,
    num_workers: int | None = None,
    multi_label: bool = False,
) -> dict:
    """Generates the shapes dataset into `out_dir` (atomically: written aside, then renamed).

    `multi_label`: the multi-label variant (module docstring). Returns the dataset metadata. Fails if
    `out_dir` already exists.
    """
    if min(num_train, num_val) <= 0 or image_size < 8:
        raise ValueError(
            f"generate: need num_train, num_val >= 1 and image_size >= 8; got "
            f"num_train={num_train}, num_val={num_val}, image_size={image_size}.")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        raise FileExistsError(f"generate: {out_dir!r} already exists; remove it or choose another --out.")
    num_workers = num_workers or os.cpu_count() or 1
    tmp_dir = f"{out_dir}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp_dir)
    try:
        _write_dataset(tmp_dir, _params(num_train, num_val, image_size, seed, multi_label), num_shards,
                       num_workers)
        os.rename(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return records.read_metadata(out_dir)


def default_cache_root() -> str:
    """`$MIM_JAX_CACHE`, else ~/.cache/mim_jax."""
    return os.environ.get("MIM_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mim_jax")


def cache_path(cache_dir: str | None = None, *, num_train: int = 20000, num_val: int = 2500,
               image_size: int = 72, seed: int = 0, multi_label: bool = False) -> str:
    """The directory `ensure_dataset` uses: <cache>/shapes-<params hash> (shapes_ml-... when multi-label)."""
    params = _params(num_train, num_val, image_size, seed, multi_label)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(cache_dir or default_cache_root(), f"{'shapes_ml' if multi_label else 'shapes'}-{digest}")


def _is_complete(path: str, params: dict) -> bool:
    """Whether `path` holds a finished dataset generated with `params`."""
    try:
        return records.read_metadata(path)["provenance"] == params
    except records.DatasetError:
        return False


def ensure_dataset(cache_dir: str | None = None, *, num_train: int = 20000, num_val: int = 2500,
                   image_size: int = 72, seed: int = 0, num_shards: int = 4,
                   num_workers: int | None = None, multi_label: bool = False) -> str:
    """Returns the path of the cached shapes dataset with these parameters, generating it if absent."""
    path = cache_path(cache_dir, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
                      multi_label=multi_label)
    params = _params(num_train, num_val, image_size, seed, multi_label)
    if _is_complete(path, params):
        return path
    if os.path.exists(path):
        raise records.DatasetError(
            f"{path!r} exists but is not a complete shapes dataset with parameters {params}; "
            "delete it and retry.")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        generate(path, num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
                 num_shards=num_shards, num_workers=num_workers, multi_label=multi_label)
    except OSError:
        # Another process finished the same dataset first; its copy is as good as ours.
        if not _is_complete(path, params):
            raise
    return path


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: generates the dataset into --out and prints a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (must not exist)")
    parser.add_argument("--num_train", type=int, default=20000)
    parser.add_argument("--num_val", type=int, default=2500)
    parser.add_argument("--image_size", type=int, default=72)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_shards", type=int, default=4)
    parser.add_argument("--num_workers", type=int, default=None)
    parser.add_argument("--multi_label", action="store_true",
                        help="several shapes per train image, noisy tags = the families present")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    metadata = generate(args.out, num_train=args.num_train, num_val=args.num_val,
                        image_size=args.image_size, seed=args.seed, num_shards=args.num_shards,
                        num_workers=args.num_workers, multi_label=args.multi_label)
    counts = {s: e["num_examples"] for s, e in metadata["splits"].items()}
    print(f"Wrote {counts} to {args.out} in {time.perf_counter() - start:.1f} s.")


if __name__ == "__main__":
    main()
