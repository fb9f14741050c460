"""On-disk dataset format: ArrayRecord shards of msgpack records plus `metadata.json`.

A dataset directory holds::

    metadata.json
    {split}-{i:05d}-of-{n:05d}.array_record     (one set of shards per split)

Each record is ``msgpack.packb({'image': <JPEG/PNG bytes>, 'label': int, 'key': str})``.
``metadata.json`` is::

    {"format": "mim_jax.records/v1",
     "classes": [names...],
     "splits": {"train": {"num_examples": N, "shards": [file names]}, ...},
     "provenance": {...}}

A split entry may also name an index file ``"index": "{split}-index.npz"`` (written by
`mim_jax.data.ingest`) holding, in record order, ``key_hashes`` (uint64, `key_hash` of each key)
and ``labels`` (int32), so that subsets can be drawn without reading images; ingest also adds
``skipped`` / ``converted`` counts by reason. Datasets without an index (synthetic, older ones)
stay readable: `read_index` then scans the records once.

Examples are dealt to shards round-robin, so a split read through `open_split` lists shard 0's
records first, then shard 1's, and so on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import grain
import msgpack
import numpy as np
from array_record.python import array_record_module

FORMAT = "mim_jax.records/v1"
METADATA_FILE = "metadata.json"
INDEX_FIELDS = ("key_hashes", "labels")
_TMP_SUFFIX = ".tmp"
_HOW_TO_CREATE = (
    "Create it with `python -m mim_jax.data.synthetic --out=DIR` (synthetic shapes) or "
    "`python -m mim_jax.data.ingest --source=... --out=DIR` (real images)."
)


class DatasetError(ValueError):
    """A dataset directory is missing, incomplete or malformed."""


def encode_record(image_bytes: bytes, label: int, key: str) -> bytes:
    """Serializes one example (encoded image, integer label, unique key) to record bytes."""
    if not isinstance(image_bytes, (bytes, bytearray)):
        raise TypeError(f"encode_record: image_bytes must be bytes, got {type(image_bytes).__name__}.")
    return msgpack.packb({"image": bytes(image_bytes), "label": int(label), "key": str(key)})


def decode_record(raw: bytes) -> dict[str, Any]:
    """Parses record bytes back into {'image': bytes, 'label': int, 'key': str}."""
    record = msgpack.unpackb(raw)
    if not isinstance(record, dict) or not {"image", "label", "key"} <= record.keys():
        raise DatasetError(
            "decode_record: a record must be a msgpack map with fields 'image', 'label', 'key'; "
            f"got {type(record).__name__} with fields {sorted(record) if isinstance(record, dict) else '-'}."
        )
    return record


def shard_name(split: str, index: int, num_shards: int) -> str:
    """Returns the file name of shard `index` of `num_shards` for `split`."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.array_record"


class ShardWriter(contextlib.AbstractContextManager):
    """Writes one ArrayRecord shard; the file appears under its final name only on a clean close."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._tmp_path = self.path + _TMP_SUFFIX
        self._writer = array_record_module.ArrayRecordWriter(self._tmp_path, "group_size:1")
        self.num_records = 0

    def write(self, record: bytes) -> None:
        """Appends one serialized record."""
        self._writer.write(record)
        self.num_records += 1

    def close(self) -> None:
        """Finishes the shard and renames it to its final name."""
        self._writer.close()
        os.replace(self._tmp_path, self.path)

    def abort(self) -> None:
        """Discards the partial shard."""
        self._writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._tmp_path)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_split(
    out_dir: str | os.PathLike,
    split: str,
    examples: Iterable[tuple[bytes, int, str]],
    num_shards: int,
) -> dict[str, Any]:
    """Writes `(image_bytes, label, key)` examples round-robin into shards; returns the split entry."""
    if num_shards <= 0:
        raise ValueError(f"write_split: num_shards must be >= 1, got {num_shards}.")
    os.makedirs(out_dir, exist_ok=True)
    names = [shard_name(split, i, num_shards) for i in range(num_shards)]
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(ShardWriter(os.path.join(out_dir, n))) for n in names]
        count = 0
        for image_bytes, label, key in examples:
            writers[count % num_shards].write(encode_record(image_bytes, label, key))
            count += 1
    return {"num_examples": count, "shards": names}


def write_metadata(
    out_dir: str | os.PathLike,
    classes: Sequence[str],
    splits: dict[str, dict[str, Any]],
    provenance: dict[str, Any],
) -> None:
    """Writes `metadata.json` (atomically); call it last, after every split is written."""
    metadata = {
        "format": FORMAT,
        "classes": list(classes),
        "splits": splits,
        "provenance": provenance,
    }
    path = os.path.join(out_dir, METADATA_FILE)
    _validate_metadata(metadata, path)
    with open(path + _TMP_SUFFIX, "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    os.replace(path + _TMP_SUFFIX, path)


def read_metadata(dataset_dir: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates `metadata.json` of a dataset directory."""
    dataset_dir = os.fspath(dataset_dir)
    if not os.path.isdir(dataset_dir):
        raise DatasetError(f"Dataset directory {dataset_dir!r} does not exist. {_HOW_TO_CREATE}")
    path = os.path.join(dataset_dir, METADATA_FILE)
    if not os.path.isfile(path):
        raise DatasetError(
            f"{path!r} is missing, so {dataset_dir!r} is not a (complete) mim_jax dataset. "
            f"{_HOW_TO_CREATE}"
        )
    try:
        with open(path) as f:
            metadata = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path!r} is not valid JSON ({e}). {_HOW_TO_CREATE}") from e
    _validate_metadata(metadata, path)
    return metadata


def _validate_metadata(metadata: Any, path: str) -> None:
    """Raises DatasetError naming the field when `metadata` does not follow the v1 schema."""

    def fail(what: str) -> None:
        raise DatasetError(f"{path!r}: {what}. Regenerate the dataset. {_HOW_TO_CREATE}")

    if not isinstance(metadata, dict):
        fail("top level must be a JSON object")
    if metadata.get("format") != FORMAT:
        fail(f"field 'format' must be {FORMAT!r}, got {metadata.get('format')!r}")
    classes = metadata.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        fail("field 'classes' must be a non-empty list of class names")
    splits = metadata.get("splits")
    if not isinstance(splits, dict) or not splits:
        fail("field 'splits' must be a non-empty object {split: {num_examples, shards}}")
    for name, entry in splits.items():
        if not isinstance(entry, dict):
            fail(f"field 'splits.{name}' must be an object")
        if not isinstance(entry.get("num_examples"), int) or entry["num_examples"] < 0:
            fail(f"field 'splits.{name}.num_examples' must be a non-negative integer")
        shards = entry.get("shards")
        if not isinstance(shards, list) or not shards or not all(isinstance(s, str) for s in shards):
            fail(f"field 'splits.{name}.shards' must be a non-empty list of file names")
        if "index" in entry and not isinstance(entry["index"], str):
            fail(f"field 'splits.{name}.index' must be a file name")
    if not isinstance(metadata.get("provenance"), dict):
        fail("field 'provenance' must be an object")


def split_info(dataset_dir: str | os.PathLike, split: str) -> dict[str, Any]:
    """Returns the metadata entry {num_examples, shards} of `split`, or an error listing the splits."""
    dataset_dir = os.fspath(dataset_dir)
    splits = read_metadata(dataset_dir)["splits"]
    if split not in splits:
        raise DatasetError(
            f"Split {split!r} is not in {os.path.join(dataset_dir, METADATA_FILE)!r}; "
            f"available splits: {sorted(splits)}."
        )
    return splits[split]


def open_split(dataset_dir: str | os.PathLike, split: str) -> grain.sources.ArrayRecordDataSource:
    """Returns a random-access source of raw record bytes for `split` (decode with decode_record)."""
    dataset_dir = os.fspath(dataset_dir)
    info = split_info(dataset_dir, split)
    paths = [os.path.join(dataset_dir, name) for name in info["shards"]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetError(
            f"Split {split!r} of {dataset_dir!r} is incomplete: missing shard(s) {missing[:3]}"
            f"{' ...' if len(missing) > 3 else ''}. Regenerate the dataset. {_HOW_TO_CREATE}"
        )
    source = grain.sources.ArrayRecordDataSource(paths)
    if len(source) != info["num_examples"]:
        raise DatasetError(
            f"Split {split!r} of {dataset_dir!r} has {len(source)} records but metadata.json says "
            f"num_examples={info['num_examples']}. Regenerate the dataset. {_HOW_TO_CREATE}"
        )
    return source


def key_hash(key: str) -> int:
    """A stable 64-bit hash of a record key (BLAKE2b), the identity subsets are drawn from."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def index_name(split: str) -> str:
    """The file name of the index (key hashes and labels) of `split`."""
    return f"{split}-index.npz"


def write_index(out_dir: str | os.PathLike, split: str, key_hashes: np.ndarray, labels: np.ndarray) -> str:
    """Writes the index of `split` atomically; returns its file name (for the split entry)."""
    if len(key_hashes) != len(labels):
        raise ValueError(f"write_index: {len(key_hashes)} key hashes but {len(labels)} labels.")
    name = index_name(split)
    path = os.path.join(out_dir, name)
    with open(path + _TMP_SUFFIX, "wb") as f:
        np.savez(f, key_hashes=np.asarray(key_hashes, np.uint64), labels=np.asarray(labels, np.int32))
    os.replace(path + _TMP_SUFFIX, path)
    return name


def read_index(dataset_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(key_hashes uint64, labels int32) of `split` in record order: from its index file, else by a scan."""
    dataset_dir = os.fspath(dataset_dir)
    info = split_info(dataset_dir, split)
    if "index" not in info:
        return scan_index(open_split(dataset_dir, split))
    path = os.path.join(dataset_dir, info["index"])
    try:
        with np.load(path) as index:
            key_hashes, labels = index["key_hashes"], index["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"Cannot read the index {path!r} of split {split!r} ({e}). Re-run the ingest "
                           f"command that wrote {dataset_dir!r} to rewrite it.") from e
    if len(key_hashes) != info["num_examples"] or len(labels) != info["num_examples"]:
        raise DatasetError(f"{path!r} indexes {len(key_hashes)} records but split {split!r} has "
                           f"{info['num_examples']}. Re-run the ingest command that wrote {dataset_dir!r}.")
    return key_hashes.astype(np.uint64), labels.astype(np.int32)


def scan_index(source: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(key_hashes, labels) by decoding every record of `source` (one pass; for datasets without an index)."""
    key_hashes = np.empty(len(source), np.uint64)
    labels = np.empty(len(source), np.int32)
    for i in range(len(source)):
        record = decode_record(source[i])
        key_hashes[i], labels[i] = key_hash(record["key"]), record["label"]
    return key_hashes, labels
