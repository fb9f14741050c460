"""Ingest images into a mim_jax dataset: ArrayRecord shards + metadata.json, streamed, parallel, resumable.

CLI::

    python -m mim_jax.data.ingest --source=imagefolder:PATH --out=DIR [--split=train] [--max_side=256]
    python -m mim_jax.data.ingest --source='webdataset:/data/coyo/{00000..00999}.tar' --out=DIR
    python -m mim_jax.data.ingest --source='parquet:/data/coyo/*.parquet' --out=DIR
    python -m mim_jax.data.ingest --source=tfds:NAME --tfds_data_dir=DIR --out=DIR
    python -m mim_jax.data.ingest --source='webdataset:/data/ig/*.tar' --tags_key=txt --label_vocab=vocab.txt --out=DIR

Sources: an image folder (``PATH/<class>/<image>``, labels from folder names, optionally mapped by a
``--class_index`` file of class names, one per line); webdataset tar shards (members grouped by key,
an image per key as jpg/jpeg/png/webp/..., optional json/txt/cls); parquet files with an image-bytes
column; a prepared TFDS dataset read without TensorFlow. Multi-label: ``--tags_key`` reads per-sample tags (a
webdataset json field or the .txt member's #hashtags, a parquet column: a list, or a caption's #hashtags)
and maps them through ``--label_vocab`` (`mim_jax.data.label_vocab`): unknown tags are dropped and
counted, samples with no known tag are kept unlabeled (an empty label set) or, with ``--skip_tagless``,
skipped; the split entry counts ``tags: {mapped, unknown, tagless}`` (tags matched / dropped, samples
left without a known tag) and ``class_frequencies``. Image-folder and TFDS labels are one-element sets.
Each output shard comes from one planned
unit of input (a chunk of files, one tar, one parquet file, a range of TFDS indices), so the output
depends only on the input and the options, never on the worker count. Finished shards are skipped
when the same command is re-run; partially written ones are redone. Junk is converted or skipped and
counted by reason in metadata.json; nothing is ever written outside --out (tar members are read as bytes).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import struct
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from mim_jax import console  # noqa: F401  (first: quiet library start-up, before TensorFlow loads)
from mim_jax.data import records
from mim_jax.data.ingest_sources import (
    PARQUET_IMAGE_COLUMNS,
    UNLABELED,
    Item,
    Source,
    UnreadableInput,
    hash_strings,
    open_source,
)
from mim_jax.data.label_vocab import LabelVocab, TagMapping, read_vocab

WORK_DIR = ".ingest"  # Per-split plan, per-shard counts and index parts (what makes resuming possible).
TOOL = "mim_jax.data.ingest"
TOOL_VERSION = 1
EXIF_ORIENTATION = 0x0112
class SkippedItem(Exception):
    """An input item that cannot become a record; `reason` is the counter it lands in."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """How images are checked and (re-)encoded."""

    max_side: int = 0                 # > 0: shrink so the longer side is at most this (never enlarge)
    jpeg_quality: int = 95            # for re-encoded images
    max_pixels: int = 89_478_485      # larger images count as decompression bombs (PIL's default limit)


# ----------------------------------------------------------------------------- images


@contextlib.contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Sets PIL's decompression-bomb limit and turns its warning into an error, for the block."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _flatten_to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels of any mode; transparent pixels are composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def prepare_image(data: bytes, options: ImageOptions) -> tuple[bytes, dict[str, Any]]:
    """Checks, converts and (re-)encodes one image; returns (bytes to store, what was changed).

    Raises SkippedItem('empty' | 'undecodable' | 'corrupt' | 'decompression_bomb'). An RGB JPEG or
    PNG that needs no resizing or EXIF rotation is stored as is; anything else as an upright RGB JPEG.
    """
    if not data:
        raise SkippedItem("empty")
    try:
        with _pixel_limit(options.max_pixels):
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > options.max_pixels:
                raise SkippedItem("decompression_bomb")
            source_mode, source_format = image.mode, image.format
            rotate = image.getexif().get(EXIF_ORIENTATION, 1) not in (1, None)
            resize = 0 < options.max_side < max(image.size)
            if image.mode not in ("RGB", "L", "CMYK"):
                image = _flatten_to_rgb(image)  # Palette / alpha: resample only after flattening.
            if resize:
                image.thumbnail((options.max_side, options.max_side), Image.BICUBIC)  # A JPEG drafts first.
            image = _flatten_to_rgb(image)
            image.load()
            if rotate:
                image = ImageOps.exif_transpose(image)  # Upright pixels; training decoders ignore EXIF.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SkippedItem("decompression_bomb") from None
    except UnidentifiedImageError:
        raise SkippedItem("undecodable") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error):
        raise SkippedItem("corrupt") from None
    changes = {"converted_from": "" if source_mode == "RGB" else source_mode, "resized": resize, "rotated": rotate}
    if not resize and not rotate and source_mode == "RGB" and source_format in ("JPEG", "PNG"):
        return data, changes
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=options.jpeg_quality)
    return buffer.getvalue(), changes


# ----------------------------------------------------------------------------- writing shards


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """Everything a worker needs to write one output shard."""

    source: Source
    task: Any
    out_dir: str
    work_dir: str
    shard: str
    options: ImageOptions
    skip_unreadable: bool = False
    vocab: LabelVocab | None = None  # set: items carry tags, mapped to label sets
    skip_tagless: bool = False       # with vocab: skip samples left without a known tag (else keep them unlabeled)


def _shard_done(job: ShardJob) -> bool:
    """A shard is finished when both its file and its counts exist (counts are written last)."""
    return (os.path.isfile(os.path.join(job.out_dir, job.shard))
            and os.path.isfile(os.path.join(job.work_dir, job.shard + ".json")))


def _write_json(path: str, value: Any) -> None:
    """Writes JSON atomically."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def write_shard(job: ShardJob) -> dict[str, Any]:
    """Converts one task into one shard; writes its counts and index part; returns the counts.

    Tag counts (with a vocabulary) cover the samples written and those skipped as tagless; a sample whose
    image is junk is counted only under its skip reason.
    """
    counts = {"written": 0, "skipped": Counter(), "converted": Counter(), "resized": 0, "rotated": 0,
              "max_label": -1, "tags": Counter()}
    key_hashes, labels, label_sets = [], [], []
    with records.ShardWriter(os.path.join(job.out_dir, job.shard)) as writer:
        try:
            items = iter(job.source.read(job.task))
            for item in items:
                try:
                    if item.skip_reason:
                        raise SkippedItem(item.skip_reason)
                    tags = _map_tags(job, item)
                    if tags is not None and not tags.labels and job.skip_tagless:
                        _count_tags(counts["tags"], tags)  # Skipped before decoding: no image work.
                        raise SkippedItem("tagless")
                    data, changes = prepare_image(item.image, job.options)
                    if tags is not None:
                        _count_tags(counts["tags"], tags)
                except SkippedItem as skipped:
                    counts["skipped"][skipped.reason] += 1
                    continue
                label = item.label if tags is None else list(tags.labels)
                writer.write(records.encode_record(data, label, item.key))
                key_hashes.append(records.key_hash(item.key))
                ids = records.label_ids(label)
                labels.append(item.label if tags is None else (ids[0] if ids else records.NO_LABEL))
                label_sets.append(ids)
                counts["written"] += 1
                counts["resized"] += int(changes["resized"])
                counts["rotated"] += int(changes["rotated"])
                counts["max_label"] = max([counts["max_label"], item.label, *ids])
                if changes["converted_from"]:
                    counts["converted"][changes["converted_from"]] += 1
        except UnreadableInput:
            if not job.skip_unreadable:
                raise
            counts["skipped"]["unreadable_shard"] += 1  # Its output shard stays empty.
    offsets, values = records.label_set_arrays(label_sets)
    with open(os.path.join(job.work_dir, job.shard + ".npz.tmp"), "wb") as f:
        np.savez(f, key_hashes=np.array(key_hashes, np.uint64), labels=np.array(labels, np.int32),
                 label_lengths=np.diff(offsets), label_values=values)
    os.replace(os.path.join(job.work_dir, job.shard + ".npz.tmp"), os.path.join(job.work_dir, job.shard + ".npz"))
    counts = {**counts, "skipped": dict(counts["skipped"]), "converted": dict(counts["converted"]),
              "tags": dict(counts["tags"])}
    _write_json(os.path.join(job.work_dir, job.shard + ".json"), counts)
    return counts


def _map_tags(job: ShardJob, item: Item) -> TagMapping | None:
    """The item's label set and tag counts when the job maps tags through a vocabulary, else None."""
    if job.vocab is None:
        return None
    return job.vocab.map_tags(item.tags or (), where=f"{job.source.describe()['kind']} sample {item.key!r}")


def _count_tags(counts: Counter, mapping: TagMapping) -> None:
    """Adds one sample's tag counts: tags mapped and unknown, and 1 to tagless when no tag was known."""
    counts["mapped"] += mapping.mapped
    counts["unknown"] += mapping.unknown
    counts["tagless"] += int(not mapping.labels)


def _read_counts(job: ShardJob) -> dict[str, Any]:
    """The counts a finished shard left behind."""
    with open(os.path.join(job.work_dir, job.shard + ".json")) as f:
        return json.load(f)


def _run_jobs(jobs: list[ShardJob], num_workers: int, progress: bool) -> None:
    """Writes every unfinished shard, in worker processes when num_workers > 1, with a progress bar."""
    pending = [job for job in jobs if not _shard_done(job)]
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), unit="shard", disable=not progress,
               desc=f"ingest -> {jobs[0].out_dir}" if jobs else "ingest")
    written = 0
    with bar:
        if num_workers > 1 and len(pending) > 1:
            # spawn, not fork: the caller may have started threads (JAX, grain).
            with multiprocessing.get_context("spawn").Pool(min(num_workers, len(pending))) as pool:
                for counts in pool.imap_unordered(write_shard, pending):
                    written += counts["written"]
                    bar.set_postfix(images=written, refresh=False)
                    bar.update()
        else:
            for job in pending:
                written += write_shard(job)["written"]
                bar.set_postfix(images=written, refresh=False)
                bar.update()


# ----------------------------------------------------------------------------- the dataset


def _sum_counts(all_counts: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals of per-shard counts."""
    skipped, converted, tags = Counter(), Counter(), Counter()
    for counts in all_counts:
        skipped.update(counts["skipped"])
        converted.update(counts["converted"])
        tags.update(counts.get("tags", {}))
    return {"tags": {k: tags[k] for k in ("mapped", "unknown", "tagless")},
            "num_examples": sum(c["written"] for c in all_counts), "skipped": dict(sorted(skipped.items())),
            "num_skipped": sum(skipped.values()), "converted": dict(sorted(converted.items())),
            "resized": sum(c["resized"] for c in all_counts), "rotated": sum(c["rotated"] for c in all_counts),
            "max_label": max(c["max_label"] for c in all_counts)}


def _check_plan(work_dir: str, plan: dict[str, Any], out_dir: str, split: str) -> None:
    """Records the plan of a new ingest, or checks that a resumed one has the same plan."""
    path = os.path.join(work_dir, "plan.json")
    if os.path.isfile(path):
        with open(path) as f:
            previous = json.load(f)
        if previous != plan:
            changed = sorted(k for k in set(plan) | set(previous) if plan.get(k) != previous.get(k))
            raise records.DatasetError(
                f"--out={out_dir!r} holds an ingest of split {split!r} made with other arguments (changed: "
                f"{', '.join(changed)}); re-run the original command to resume it, or use a new --out.")
    else:
        _write_json(path, plan)


def _existing_metadata(out_dir: str) -> dict[str, Any] | None:
    """metadata.json of --out when it already holds a dataset, else None."""
    if not os.path.isfile(os.path.join(out_dir, records.METADATA_FILE)):
        return None
    return records.read_metadata(out_dir)


def _final_classes(classes: list[str] | None, max_label: int, existing: list[str] | None,
                   out_dir: str, split: str, labeled: bool) -> list[str]:
    """Class names for metadata.json: given ones, or numbered / 'unlabeled' ones from the labels seen."""
    if classes is None:
        classes = existing if existing and len(existing) > max_label else (
            [str(i) for i in range(max(max_label, 0) + 1)] if labeled else UNLABELED)
    if max_label >= len(classes):
        raise records.DatasetError(f"Split {split!r} has label {max_label} but only {len(classes)} class names; "
                                   f"pass a --class_index file listing every class.")
    if existing is not None and existing != classes:
        raise records.DatasetError(f"Split {split!r} has classes {classes[:3]}... ({len(classes)}) but "
                                   f"{out_dir}/metadata.json has {existing[:3]}... ({len(existing)}); ingest "
                                   f"into another --out or pass --class_index with the dataset's classes.")
    return classes


def _assemble(out_dir: str, work_dir: str, split: str, jobs: list[ShardJob], classes: list[str] | None,
              plan: dict[str, Any]) -> dict[str, Any]:
    """Joins the per-shard counts and index parts into the split's index file and metadata.json."""
    totals = _sum_counts([_read_counts(job) for job in jobs])
    parts = [np.load(os.path.join(work_dir, job.shard + ".npz")) for job in jobs]
    key_hashes = np.concatenate([p["key_hashes"] for p in parts]).astype(np.uint64)
    labels = np.concatenate([p["labels"] for p in parts]).astype(np.int32)
    lengths = np.concatenate([p["label_lengths"] for p in parts]).astype(np.int64)
    values = np.concatenate([p["label_values"] for p in parts]).astype(np.int32)
    existing = _existing_metadata(out_dir)
    multi_label = "label_vocab" in plan
    labeled = bool(plan["input"].get("label_key")) or multi_label or plan["input"]["kind"] in ("imagefolder", "tfds")
    classes = _final_classes(classes, totals.pop("max_label"), existing and existing["classes"], out_dir, split,
                             labeled=labeled)
    tags = totals.pop("tags")
    label_sets = (np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), values) if multi_label else None
    entry = {**totals, "shards": [job.shard for job in jobs], "multi_label": multi_label,
             "index": records.write_index(out_dir, split, key_hashes, labels, label_sets)}
    if multi_label:
        entry["tags"] = {**tags, "skip_tagless": plan["label_vocab"]["skip_tagless"]}
    if labeled and classes != UNLABELED:
        entry["class_frequencies"] = np.bincount(values, minlength=len(classes)).tolist()
    splits = {**(existing["splits"] if existing else {}), split: entry}
    provenance = existing["provenance"] if existing else {}
    provenance = {**provenance, "tool": TOOL, "tool_version": TOOL_VERSION,
                  "ingest": {**provenance.get("ingest", {}), split: plan}}
    records.write_metadata(out_dir, classes, splits, provenance)
    return records.read_metadata(out_dir)


def _tag_vocabulary(source: str, label_vocab: str, tags_key: str, label_key: str,
                    class_index: str) -> LabelVocab | None:
    """The vocabulary tags map through (None without tags); errors name the flags that do not fit together."""
    if not tags_key and not label_vocab:
        return None
    kind = source.partition(":")[0]
    if not tags_key or not label_vocab:
        raise records.DatasetError(f"--tags_key={tags_key!r} and --label_vocab={label_vocab!r} go together: "
                                   f"tags are read with --tags_key and mapped through --label_vocab; pass both.")
    if kind not in ("webdataset", "parquet"):
        raise records.DatasetError(f"--tags_key / --label_vocab read per-sample tags of webdataset or parquet "
                                   f"inputs, not {kind}: (whose labels become one-element sets); drop them or "
                                   f"use --class_index.")
    if label_key or class_index:
        raise records.DatasetError("--tags_key (label sets from tags) cannot be combined with --label_key or "
                                   "--class_index (single labels); pass one or the other.")
    return read_vocab(label_vocab)


def ingest(source: str, out_dir: str, split: str = "train", *, options: ImageOptions = ImageOptions(),
           examples_per_shard: int = 1024, num_workers: int | None = None, class_index: str = "",
           label_key: str = "", image_column: str = "", tfds_data_dir: str = "", tfds_split: str = "",
           skip_unreadable: bool = False, progress: bool = True, label_vocab: str = "", tags_key: str = "",
           skip_tagless: bool = False) -> dict[str, Any]:
    """Ingests `source` as `split` of the dataset in `out_dir` (resuming a previous run); returns its metadata.

    With `tags_key` and `label_vocab` the split is multi-label: tags mapped through the vocabulary file.
    """
    if examples_per_shard <= 0 or options.max_side < 0 or not 1 <= options.jpeg_quality <= 100:
        raise records.DatasetError(f"Need --examples_per_shard >= 1, --max_side >= 0, 1 <= --jpeg_quality <= 100; "
                                   f"got {examples_per_shard}, {options.max_side}, {options.jpeg_quality}.")
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise records.DatasetError(f"--out={out_dir!r} is a file; pass a directory (it is created if missing).")
    existing = _existing_metadata(out_dir)
    work_dir = os.path.join(out_dir, WORK_DIR, split)
    if existing and split in existing["splits"] and not os.path.isdir(work_dir):
        raise records.DatasetError(f"--out={out_dir!r} already has a split {split!r} not written by ingest; "
                                   f"choose another --split or --out.")
    vocab = _tag_vocabulary(source, label_vocab, tags_key, label_key, class_index)
    reader, classes = open_source(source, split=split, examples_per_shard=examples_per_shard, out_dir=out_dir,
                                  class_index=class_index, existing_classes=existing and existing["classes"],
                                  label_key=label_key, image_column=image_column, tfds_data_dir=tfds_data_dir,
                                  tfds_split=tfds_split, tags_key=tags_key)
    if vocab is not None:
        classes = list(vocab.classes)
    tasks = reader.plan()
    plan = {"source": source, "input": reader.describe(), "options": dataclasses.asdict(options),
            "examples_per_shard": examples_per_shard, "num_shards": len(tasks), "tool_version": TOOL_VERSION,
            "tasks_hash": hash_strings(json.dumps(t) for t in tasks)}
    if vocab is not None:
        plan["label_vocab"] = {"path": os.path.abspath(label_vocab), "classes": len(vocab.classes),
                               "hash": hash_strings(vocab.fingerprint()), "skip_tagless": skip_tagless}
    os.makedirs(work_dir, exist_ok=True)
    _check_plan(work_dir, plan, out_dir, split)
    worker_reader = dataclasses.replace(reader, files=()) if hasattr(reader, "files") else reader  # Light to pickle.
    jobs = [ShardJob(worker_reader, task, out_dir, work_dir, records.shard_name(split, i, len(tasks)), options,
                     skip_unreadable, vocab, skip_tagless) for i, task in enumerate(tasks)]
    _run_jobs(jobs, num_workers or os.cpu_count() or 1, progress)
    return _assemble(out_dir, work_dir, split, jobs, classes, plan)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: ingests --source into --out and prints what was written and skipped."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True,
                        help="imagefolder:PATH | webdataset:GLOB | parquet:GLOB | tfds:NAME (or a TFDS dataset dir)")
    parser.add_argument("--out", required=True, help="dataset directory (created; re-run to resume)")
    parser.add_argument("--split", default="train", help="name of the split to write")
    parser.add_argument("--max_side", type=int, default=0, help="shrink images to this longer side (0: keep)")
    parser.add_argument("--jpeg_quality", type=int, default=95)
    parser.add_argument("--max_pixels", type=int, default=ImageOptions.max_pixels,
                        help="larger images are skipped as decompression bombs")
    parser.add_argument("--examples_per_shard", type=int, default=1024, help="imagefolder and tfds shard size")
    parser.add_argument("--num_workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--class_index", default="", help="file with one class name per line (label = line)")
    parser.add_argument("--label_key", default="", help="webdataset: json field or 'cls'; parquet: column")
    parser.add_argument("--image_column", default="", help=f"parquet image column (default: first of "
                                                           f"{PARQUET_IMAGE_COLUMNS})")
    parser.add_argument("--tfds_data_dir", default="")
    parser.add_argument("--tfds_split", default="", help="TFDS split to read (default: --split)")
    parser.add_argument("--skip_unreadable", action="store_true",
                        help="count tar/parquet files that cannot be opened as skipped instead of stopping")
    parser.add_argument("--tags_key", default="",
                        help="per-sample tags (multi-label): webdataset 'txt' (#hashtags of the .txt member) or a "
                             "json field; parquet: a column (a list of tags, or a caption with #hashtags)")
    parser.add_argument("--label_vocab", default="",
                        help="with --tags_key: one class per line, optionally `class<TAB>alias1,alias2`")
    parser.add_argument("--skip_tagless", action="store_true",
                        help="with --tags_key: skip samples with no known tag (default: keep them unlabeled)")
    args = parser.parse_args(argv)
    options = ImageOptions(max_side=args.max_side, jpeg_quality=args.jpeg_quality, max_pixels=args.max_pixels)
    try:
        metadata = ingest(args.source, args.out, args.split, options=options,
                          examples_per_shard=args.examples_per_shard, num_workers=args.num_workers,
                          class_index=args.class_index, label_key=args.label_key, image_column=args.image_column,
                          tfds_data_dir=args.tfds_data_dir, tfds_split=args.tfds_split,
                          skip_unreadable=args.skip_unreadable, label_vocab=args.label_vocab, tags_key=args.tags_key,
                          skip_tagless=args.skip_tagless)
    except records.DatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    entry = metadata["splits"][args.split]
    print(f"Wrote {entry['num_examples']} images in {len(entry['shards'])} shards to {args.out} (split "
          f"{args.split!r}); skipped {entry['num_skipped']} {entry['skipped']}; converted to RGB {entry['converted']}; "
          f"resized {entry['resized']}." + (f" Tags: {entry['tags']}." if "tags" in entry else ""))


if __name__ == "__main__":
    main()
