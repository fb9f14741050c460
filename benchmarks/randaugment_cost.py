"""Host cost of RandAugment per image, ms of CPU time of this process (one thread), median of repeats.

- ``randaugment``: `rand_augment(spec)` alone on an image already cropped to S x S;
- ``per op``: each op of the spec's list at magnitude 9 on an S x S image (the first size only);
- ``TrainTransform``: the whole fine-tuning train transform (record decode, RandomResizedCrop(S, 0.08-1), flip,
  uint8 array) on photo-like ~500x375 JPEGs, with and without RandAugment.

    PYTHONPATH=. python benchmarks/randaugment_cost.py [--sizes=224,64] [--spec=rand-m9-mstd0.5-inc1] [--num_images=100]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from input_pipeline import photo_like_jpeg

from mim_jax.data import pipeline, randaugment, records, transforms


def cpu_ms(fn: Callable[[int], object], n: int, repeats: int) -> float:
    """Median over `repeats` of the CPU ms per call of fn(i) for i in range(n)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        for i in range(n):
            fn(i)
        times.append((time.process_time() - start) / n * 1e3)
    return float(np.median(times))


def main() -> None:
    """Prints one line per measurement."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="224,64")
    parser.add_argument("--spec", default=randaugment.EXAMPLE)
    parser.add_argument("--num_images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    spec = randaugment.parse_spec(args.spec, "--spec")
    jpegs = [photo_like_jpeg(i) for i in range(args.num_images)]
    recs = [records.encode_record(b, 0, str(i)) for i, b in enumerate(jpegs)]
    n, reps = args.num_images, args.repeats
    for s_index, size in enumerate(int(s) for s in args.sizes.split(",")):
        crops = [transforms.center_crop_eval(transforms.decode_image(b), size) for b in jpegs]
        rng = np.random.default_rng(0)
        ra = cpu_ms(lambda i, crops=crops, rng=rng: randaugment.rand_augment(crops[i], spec, rng), n, reps)
        print(f"{size}px randaugment {args.spec}: {ra:.3f} ms/img")
        if s_index == 0:
            for name in randaugment.op_names(spec):
                ms = cpu_ms(lambda i, name=name, crops=crops, rng=rng: randaugment.apply_op(crops[i], name, 9.0, rng),
                            n, reps)
                print(f"{size}px   op {name:22s} {ms:.3f} ms")
        for label, aa in (("without", ""), ("with", args.spec)):
            t = pipeline.TrainTransform(size, (0.08, 1.0), rand_augment=randaugment.parse_spec(aa))
            ms = cpu_ms(lambda i, t=t: t.random_map(recs[i], np.random.default_rng(i)), n, reps)
            print(f"{size}px TrainTransform {label} RandAugment: {ms:.3f} ms/img ({1e3 / ms:.0f} img/s per core)")


if __name__ == "__main__":
    main()
