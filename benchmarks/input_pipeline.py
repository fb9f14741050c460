"""Input-pipeline throughput per core: decode + RandomResizedCrop(224) + flip + normalize, img/s.

One process pinned to one core runs, in the same run and on the same images:

- ``plain PIL loop, full-size``: the baseline, what a straightforward loader does per image
  (``Image.open(...).convert('RGB')``, crop + bicubic resize, flip, ``np.asarray``, normalize);
- ``mim_jax, full-size records``: the pipeline's own `TrainTransform` (msgpack record, OpenCV decode at
  reduced scale when the crop allows, OpenCV antialiased bicubic resize, flip) on a dataset ingested
  without resizing;
- ``mim_jax, ingest --max_side=256``: the same transform on a dataset ingested with ``--max_side=256``;
- ``mim_jax PIL path``: `TrainTransform(use_opencv=False)`, the previous all-PIL transform, on the same
  256-px records (separates OpenCV's share from the ingest resize's);
- ``plain PIL loop, 256-px``: the baseline loop on the 256-px images.

Each loop is timed with normalization on the host (float32, ImageNet mean/std, the fused OpenCV
`transforms.normalize_host` for every row) and without it (as in training, where the uint8 batch is
normalized on device). Rates are images per CPU-second of the pinned
process (what one core delivers even while other jobs share the machine) and per wall-second. The test images are generated photo-like JPEGs (1/f colour noise plus shapes,
~500x375, quality 90, ~90 KB, like ImageNet's average file).

    python benchmarks/input_pipeline.py [--num_images=200] [--repeats=5] [--workdir=/tmp/mim_jax_bench]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import time
from collections.abc import Callable

import cv2
import numpy as np
import PIL
from PIL import Image, ImageDraw

from mim_jax.data import ingest, pipeline, records, transforms

SIZE = 224
MEAN = np.array(transforms.IMAGENET_MEAN, np.float32) * 255
INV_STD = 1 / (np.array(transforms.IMAGENET_STD, np.float32) * 255)
TEXTURE = 10.0
TRAIN_TRANSFORM = pipeline.TrainTransform(SIZE)  # What train_batches uses (OpenCV path by default).
PIL_TRANSFORM = pipeline.TrainTransform(SIZE, use_opencv=False)
SHAPES = ((500, 375), (375, 500), (500, 333), (500, 400), (440, 500))


def photo_like_jpeg(index: int) -> bytes:
    """A ~500x375 JPEG with natural-image statistics (1/f noise and a few shapes), quality 90."""
    rng = np.random.default_rng(index)
    width, height = SHAPES[index % len(SHAPES)]
    pixels = np.zeros((height, width, 3), np.float32)
    for octave in range(8):
        cells = 2 ** (octave + 1)
        noise = rng.normal(0, 1, size=(cells, max(2, cells * width // height))).astype(np.float32)
        layer = np.asarray(Image.fromarray(noise).resize((width, height), Image.BICUBIC))
        colour = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
        pixels += (50 / 1.3 ** octave) * layer[..., None] * colour
    pixels += rng.normal(0, TEXTURE, size=pixels.shape).astype(np.float32)  # Fine texture, like foliage or fur.
    image = Image.fromarray((pixels + rng.uniform(60, 190, size=3)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 8))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(10, 120)
        draw.ellipse([x - r, y - r * rng.uniform(0.4, 1), x + r, y + r], fill=tuple(rng.integers(0, 256, 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


normalize_host = transforms.normalize_host  # One fused per-channel affine map (cv2.transform), ~0.1 ms.


def _check_normalize() -> None:
    """The host normalization equals the formula."""
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(normalize_host(image), (image.astype(np.float32) - MEAN) * INV_STD, atol=1e-5)


def plain_pil(image_bytes: bytes, rng: np.random.Generator) -> np.ndarray:
    """The baseline: full decode, RandomResizedCrop (same box sampling), flip, uint8 array."""
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    left, top, w, h = transforms.sample_crop_box(image.width, image.height, (0.2, 1.0), (3 / 4, 4 / 3), rng)
    image = image.resize((SIZE, SIZE), Image.BICUBIC, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(image)


def mim_jax_transform(record: bytes, rng: np.random.Generator) -> np.ndarray:
    """The training pipeline's per-record transform (uint8 out)."""
    return TRAIN_TRANSFORM.random_map(record, rng)["image"]


def mim_jax_pil_transform(record: bytes, rng: np.random.Generator) -> np.ndarray:
    """The same transform forced onto its PIL reference path."""
    return PIL_TRANSFORM.random_map(record, rng)["image"]


def opencv_vs_pil(records_: list[bytes]) -> tuple[float, float]:
    """(mean, worst per-image mean) |OpenCV - PIL| in uint8 levels, same crop boxes and flips."""
    means = []
    for i, record in enumerate(records_):
        fast = TRAIN_TRANSFORM.random_map(record, np.random.default_rng(i))["image"]
        reference = PIL_TRANSFORM.random_map(record, np.random.default_rng(i))["image"]
        means.append(np.abs(fast.astype(np.float64) - reference).mean())
    return float(np.mean(means)), float(np.max(means))


def with_host_normalize(fn: Callable) -> Callable:
    """`fn` followed by host-side normalization (training normalizes on device instead)."""
    return lambda item, rng: normalize_host(fn(item, rng))


def _rates(fn: Callable, inputs: list[bytes], rng: np.random.Generator) -> tuple[float, float]:
    """(img per CPU-second, img per wall-second) of one pass of `fn` over `inputs`."""
    wall, cpu = time.perf_counter(), time.process_time()
    for item in inputs:
        fn(item, rng)
    return len(inputs) / (time.process_time() - cpu), len(inputs) / (time.perf_counter() - wall)


def measure(loops: dict[str, tuple[Callable, list[bytes]]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best-of-`repeats` rates per loop; the loops take turns in every repeat, so load bursts hit all alike.

    CPU time (`time.process_time`, one thread) is what one core delivers even when other jobs share
    the machine; wall time is lower whenever the core also serves others.
    """
    rng = np.random.default_rng(0)
    for fn, inputs in loops.values():
        for item in inputs[:20]:  # Warm-up.
            fn(item, rng)
    best = {name: (0.0, 0.0) for name in loops}
    for _ in range(repeats):
        for name, (fn, inputs) in loops.items():
            cpu, wall = _rates(fn, inputs, rng)
            best[name] = (max(best[name][0], cpu), max(best[name][1], wall))
    return best


def _records(dataset_dir: str) -> list[bytes]:
    source = records.open_split(dataset_dir, "train")
    return [source[i] for i in range(len(source))]


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


def main() -> None:
    """Builds the two datasets, measures the four loops, prints a Markdown table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/mim_jax_input_bench")
    parser.add_argument("--core", type=int, default=0, help="CPU core to pin to (-1: no pinning)")
    args = parser.parse_args()
    if args.core >= 0:
        os.sched_setaffinity(0, {args.core})
    load_before = os.getloadavg()
    _check_normalize()
    shutil.rmtree(args.workdir, ignore_errors=True)
    folder = os.path.join(args.workdir, "images", "photos")
    os.makedirs(folder)
    originals = [photo_like_jpeg(i) for i in range(args.num_images)]
    for i, data in enumerate(originals):
        with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as f:
            f.write(data)
    images = os.path.join(args.workdir, "images")
    full = ingest.ingest(f"imagefolder:{images}", os.path.join(args.workdir, "full"), num_workers=1, progress=False)
    ingest.ingest(f"imagefolder:{images}", os.path.join(args.workdir, "r256"), num_workers=1, progress=False,
                  options=ingest.ImageOptions(max_side=256, jpeg_quality=90))
    full_records, small_records = _records(os.path.join(args.workdir, "full")), _records(os.path.join(args.workdir, "r256"))
    small_images = [records.decode_record(r)["image"] for r in small_records]
    loops = {
        "plain PIL loop, full-size JPEGs (baseline)": (plain_pil, originals),
        "mim_jax TrainTransform, full-size records": (mim_jax_transform, full_records),
        "mim_jax TrainTransform, ingest --max_side=256": (mim_jax_transform, small_records),
        "mim_jax PIL path (use_opencv=False), ingest --max_side=256": (mim_jax_pil_transform, small_records),
        "plain PIL loop, 256-px JPEGs": (plain_pil, small_images),
    }
    normalized = measure({name: (with_host_normalize(fn), inputs) for name, (fn, inputs) in loops.items()},
                         args.repeats)
    uint8 = measure(loops, args.repeats)
    rows = {name: normalized[name] + uint8[name] for name in loops}
    baseline = rows["plain PIL loop, full-size JPEGs (baseline)"]
    sizes = [Image.open(io.BytesIO(d)).size for d in originals[:5]]
    load_after = os.getloadavg()
    fidelity = {"full": opencv_vs_pil(full_records), "256": opencv_vs_pil(small_records)}
    print(f"Machine: {platform.node()} / {_cpu_model()} / {os.cpu_count()} cores, pinned to core {args.core}; "
          f"load average (1/5/15 min) {_load(load_before)} before, {_load(load_after)} after; "
          f"Pillow {PIL.__version__}, OpenCV {cv2.__version__}; {args.num_images} images (e.g. {sizes[0]}), "
          f"{np.mean([len(d) for d in originals]) / 1e3:.0f} KB mean; 256-px: "
          f"{np.mean([len(d) for d in small_images]) / 1e3:.0f} KB mean; ingest written "
          f"{full['splits']['train']['num_examples']}.")
    print(f"OpenCV vs PIL path, same boxes and flips, mean |diff| in uint8 levels (mean / worst image): "
          f"full-size {fidelity['full'][0]:.2f} / {fidelity['full'][1]:.2f}, "
          f"256-px {fidelity['256'][0]:.2f} / {fidelity['256'][1]:.2f}.")
    print("| loop (one core, 224 px, decode + RandomResizedCrop + flip [+ normalize]) | img per CPU-s, with host "
          "normalize | vs baseline | img per wall-s | img per CPU-s, normalize on device | vs baseline |")
    print("|---|---|---|---|---|---|")
    for name, (cpu, wall, cpu_uint8, _) in rows.items():
        print(f"| {name} | {cpu:.0f} | {cpu / baseline[0]:.2f}x | {wall:.0f} | {cpu_uint8:.0f} | "
              f"{cpu_uint8 / baseline[2]:.2f}x |")
    print(json.dumps({"rows": {k: [round(x, 1) for x in v] for k, v in rows.items()},
                      "columns": ["cpu_normalized", "wall_normalized", "cpu_uint8", "wall_uint8"],
                      "cpu": _cpu_model(), "load_average_before": load_before, "load_average_after": load_after,
                      "opencv_vs_pil_mean_abs_diff": fidelity}))


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.1f}" for x in load)

if __name__ == "__main__":
    main()
