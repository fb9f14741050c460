"""On-disk dataset format: ArrayRecord shards of msgpack records plus `metadata.json`.

A dataset directory holds::

    metadata.json
    {split}-{i:05d}-of-{n:05d}.array_record     (one set of shards per split)

Each record is ``msgpack.packb({'image': <JPEG/PNG bytes>, 'label': int, 'key': str})``; a multi-label
record (format v2) adds ``'labels': [class ids]``, its label set in record order (possibly empty =
unlabeled), and then stores ``label`` = its first label, or -1 when it has none, so that single-label
readers (probe, kNN, few-shot, fine-tune) keep working. `decode_record` always returns ``labels``: a
single-label record (every v1 record) reads as the one-element set ``[label]`` (``[]`` when label < 0).
``metadata.json`` is::

    {"format": "mim_jax.records/v2",
     "classes": [names...],
     "multi_label": bool,                       (any split multi-label)
     "class_frequencies": [count per class],    (summed over the splits that have them)
     "splits": {"train": {"num_examples": N, "shards": [file names],
                          "multi_label": bool, "class_frequencies": [...]}, ...},
     "provenance": {...}}

Datasets written as ``mim_jax.records/v1`` (no multi_label / class_frequencies, single labels only) read
unchanged. A split entry may also name an index file ``"index": "{split}-index.npz"`` (written by
`mim_jax.data.ingest`) holding, in record order, ``key_hashes`` (uint64, `key_hash` of each key),
``labels`` (int32, the single label as above) and, for v2 indexes, the label sets as ``label_offsets``
(int64 [N+1]) and ``label_values`` (int32; set i is values[offsets[i]:offsets[i+1]]), so that subsets
and label statistics never read images; ingest also adds ``skipped`` / ``converted`` counts by reason
and, with tags, ``tags`` counts. Datasets without an index (synthetic, older ones) stay readable:
`read_index` / `read_label_sets` then scan the records once.

Examples are dealt to shards round-robin, so a split read through `open_split` lists shard 0's
records first, then shard 1's, and so on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grain
import msgpack
import numpy as np
from array_record.python import array_record_module

FORMAT = "mim_jax.records/v2"
FORMAT_V1 = "mim_jax.records/v1"
READABLE_FORMATS = (FORMAT_V1, FORMAT)
METADATA_FILE = "metadata.json"
INDEX_FIELDS = ("key_hashes", "labels")
LABEL_SET_FIELDS = ("label_offsets", "label_values")
NO_LABEL = -1  # `label` of a multi-label record with an empty set
_TMP_SUFFIX = ".tmp"
_HOW_TO_CREATE = (
    "Create it with `python -m mim_jax.data.synthetic --out=DIR` (synthetic shapes) or "
    "`python -m mim_jax.data.ingest --source=... --out=DIR` (real images)."
)


class DatasetError(ValueError):
    """A dataset directory is missing, incomplete or malformed."""


Label = int | Sequence[int]  # a single class id, or a label set (multi-label record)


def check_label_set(labels: Sequence[int], key: str, num_classes: int | None = None) -> list[int]:
    """The label set as a list of distinct class ids in [0, num_classes); ValueError naming `key` otherwise."""
    ids = [int(i) for i in labels]
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"Record {key!r}: labels={ids} must be distinct class ids >= 0.")
    if num_classes is not None and ids and max(ids) >= num_classes:
        raise ValueError(f"Record {key!r}: class id {max(ids)} in labels={ids} is beyond the {num_classes} "
                         f"classes of the dataset; fix the labels or list every class.")
    return ids


def is_single_label(label: Label) -> bool:
    """Whether `label` is one class id (not a label set)."""
    return isinstance(label, (int, np.integer))


def label_ids(label: Label) -> list[int]:
    """The label set of `label`: [label] for a class id >= 0, [] for a negative one, the list of a set."""
    if is_single_label(label):
        return [int(label)] if label >= 0 else []
    return [int(i) for i in label]


def encode_record(image_bytes: bytes, label: Label, key: str) -> bytes:
    """Serializes one example (encoded image, class id or label set, unique key) to record bytes.

    An int `label` gives a single-label record (byte for byte a v1 record); a sequence gives a multi-label
    record with `labels` = the set and `label` = its first id (-1 when empty).
    """
    if not isinstance(image_bytes, (bytes, bytearray)):
        raise TypeError(f"encode_record: image_bytes must be bytes, got {type(image_bytes).__name__}.")
    record = {"image": bytes(image_bytes), "label": 0, "key": str(key)}
    if is_single_label(label):
        record["label"] = int(label)
    else:
        ids = check_label_set(label, key)
        record.update(label=ids[0] if ids else NO_LABEL, labels=ids)
    return msgpack.packb(record)


def decode_record(raw: bytes) -> dict[str, Any]:
    """Parses record bytes into {'image': bytes, 'label': int, 'key': str, 'labels': list[int]}.

    `labels` is the record's label set; a single-label (v1) record gives [label], or [] when label < 0.
    """
    record = msgpack.unpackb(raw)
    if not isinstance(record, dict) or not {"image", "label", "key"} <= record.keys():
        raise DatasetError(
            "decode_record: a record must be a msgpack map with fields 'image', 'label', 'key'; "
            f"got {type(record).__name__} with fields {sorted(record) if isinstance(record, dict) else '-'}."
        )
    if "labels" not in record:
        record["labels"] = label_ids(record["label"])
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
    examples: Iterable[tuple[bytes, Label, str]],
    num_shards: int,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Writes `(image_bytes, label or label set, key)` examples round-robin into shards; returns the split entry.

    With `num_classes` the entry also gets `class_frequencies` and `multi_label` (any label set given), and
    a class id >= num_classes is a ValueError naming the record.
    """
    if num_shards <= 0:
        raise ValueError(f"write_split: num_shards must be >= 1, got {num_shards}.")
    os.makedirs(out_dir, exist_ok=True)
    names = [shard_name(split, i, num_shards) for i in range(num_shards)]
    frequencies = np.zeros(num_classes or 0, np.int64)
    multi_label = False
    with contextlib.ExitStack() as stack:
        writers = [stack.enter_context(ShardWriter(os.path.join(out_dir, n))) for n in names]
        count = 0
        for image_bytes, label, key in examples:
            if num_classes is not None:
                multi_label |= not is_single_label(label)
                frequencies[check_label_set(label_ids(label), key, num_classes)] += 1
            writers[count % num_shards].write(encode_record(image_bytes, label, key))
            count += 1
    entry = {"num_examples": count, "shards": names}
    if num_classes is not None:
        entry.update(multi_label=multi_label, class_frequencies=frequencies.tolist())
    return entry


def write_metadata(
    out_dir: str | os.PathLike,
    classes: Sequence[str],
    splits: dict[str, dict[str, Any]],
    provenance: dict[str, Any],
) -> None:
    """Writes `metadata.json` (atomically); call it last, after every split is written.

    `multi_label` and `class_frequencies` are derived from the split entries (any split multi-label; the
    sum of the splits' class_frequencies, written when every split has them).
    """
    metadata = {
        "format": FORMAT,
        "classes": list(classes),
        "multi_label": any(bool(e.get("multi_label", False)) for e in splits.values()),
        "splits": splits,
        "provenance": provenance,
    }
    if splits and all("class_frequencies" in e for e in splits.values()):
        totals = np.zeros(len(classes), np.int64)
        for entry in splits.values():
            if len(entry["class_frequencies"]) == len(classes):
                totals += np.asarray(entry["class_frequencies"], np.int64)
        metadata["class_frequencies"] = totals.tolist()
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
    """Raises DatasetError naming the field when `metadata` follows neither the v1 nor the v2 schema."""

    def fail(what: str) -> None:
        raise DatasetError(f"{path!r}: {what}. Regenerate the dataset. {_HOW_TO_CREATE}")

    if not isinstance(metadata, dict):
        fail("top level must be a JSON object")
    if metadata.get("format") not in READABLE_FORMATS:
        fail(f"field 'format' must be one of {READABLE_FORMATS}, got {metadata.get('format')!r}")
    classes = metadata.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        fail("field 'classes' must be a non-empty list of class names")
    if not isinstance(metadata.get("multi_label", False), bool):
        fail("field 'multi_label' must be true or false")
    _check_frequencies(metadata, "class_frequencies", len(classes), fail)
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
        _check_frequencies(entry, f"splits.{name}.class_frequencies", len(classes), fail)
    if not isinstance(metadata.get("provenance"), dict):
        fail("field 'provenance' must be an object")


def _check_frequencies(entry: dict, field: str, num_classes: int, fail: Callable[[str], None]) -> None:
    """Fails naming `field` unless entry's class_frequencies (when present) has one count >= 0 per class."""
    frequencies = entry.get("class_frequencies")
    if frequencies is None:
        return
    if (not isinstance(frequencies, list) or len(frequencies) != num_classes
            or not all(isinstance(c, int) and c >= 0 for c in frequencies)):
        fail(f"field {field!r} must list one count >= 0 for each of the {num_classes} classes")


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


def label_set_arrays(label_sets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [N+1], values int32) of N label sets: set i is values[offsets[i]:offsets[i+1]]."""
    lengths = np.fromiter((len(s) for s in label_sets), np.int64, len(label_sets))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.fromiter((i for s in label_sets for i in s), np.int32, int(offsets[-1]))
    return offsets, values


def single_label_sets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of single labels as one-element sets (a negative label gives an empty set)."""
    labels = np.asarray(labels, np.int32)
    offsets = np.concatenate([[0], np.cumsum(labels >= 0)]).astype(np.int64)
    return offsets, labels[labels >= 0]


def write_index(out_dir: str | os.PathLike, split: str, key_hashes: np.ndarray, labels: np.ndarray,
                label_sets: tuple[np.ndarray, np.ndarray] | None = None) -> str:
    """Writes the index of `split` atomically; returns its file name (for the split entry).

    `label_sets` = (offsets, values) of the records' label sets (multi-label splits); without it the
    index holds the single `labels` only and readers derive one-element sets.
    """
    if len(key_hashes) != len(labels):
        raise ValueError(f"write_index: {len(key_hashes)} key hashes but {len(labels)} labels.")
    arrays = {"key_hashes": np.asarray(key_hashes, np.uint64), "labels": np.asarray(labels, np.int32)}
    if label_sets is not None:
        offsets, values = label_sets
        if len(offsets) != len(labels) + 1 or offsets[-1] != len(values):
            raise ValueError(f"write_index: label offsets ({len(offsets)}, last {offsets[-1]}) do not fit "
                             f"{len(labels)} records and {len(values)} label values.")
        arrays.update(label_offsets=np.asarray(offsets, np.int64), label_values=np.asarray(values, np.int32))
    name = index_name(split)
    path = os.path.join(out_dir, name)
    with open(path + _TMP_SUFFIX, "wb") as f:
        np.savez(f, **arrays)
    os.replace(path + _TMP_SUFFIX, path)
    return name


def _load_index(dataset_dir: str, split: str, info: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of the index file of `split`, checked against its record count."""
    path = os.path.join(dataset_dir, info["index"])
    try:
        with np.load(path) as index:
            arrays = {name: index[name] for name in index.files}
        key_hashes, labels = arrays["key_hashes"], arrays["labels"]
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"Cannot read the index {path!r} of split {split!r} ({e}). Re-run the ingest "
                           f"command that wrote {dataset_dir!r} to rewrite it.") from e
    if len(key_hashes) != info["num_examples"] or len(labels) != info["num_examples"]:
        raise DatasetError(f"{path!r} indexes {len(key_hashes)} records but split {split!r} has "
                           f"{info['num_examples']}. Re-run the ingest command that wrote {dataset_dir!r}.")
    return arrays


def read_index(dataset_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(key_hashes uint64, labels int32) of `split` in record order: from its index file, else by a scan.

    `labels` is each record's single label (a multi-label record's first label, -1 for an empty set).
    """
    dataset_dir = os.fspath(dataset_dir)
    info = split_info(dataset_dir, split)
    if "index" not in info:
        return scan_index(open_split(dataset_dir, split))
    arrays = _load_index(dataset_dir, split, info)
    return arrays["key_hashes"].astype(np.uint64), arrays["labels"].astype(np.int32)


def read_label_sets(dataset_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [N+1], values int32) of the label sets of `split` in record order.

    From the index file (single labels become one-element sets), else by one scan of the records.
    """
    dataset_dir = os.fspath(dataset_dir)
    info = split_info(dataset_dir, split)
    if "index" not in info:
        return scan_label_sets(open_split(dataset_dir, split))
    arrays = _load_index(dataset_dir, split, info)
    if all(name in arrays for name in LABEL_SET_FIELDS):
        return arrays["label_offsets"].astype(np.int64), arrays["label_values"].astype(np.int32)
    return single_label_sets(arrays["labels"])


def scan_index(source: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(key_hashes, labels) by decoding every record of `source` (one pass; for datasets without an index)."""
    key_hashes = np.empty(len(source), np.uint64)
    labels = np.empty(len(source), np.int32)
    for i in range(len(source)):
        record = decode_record(source[i])
        key_hashes[i], labels[i] = key_hash(record["key"]), record["label"]
    return key_hashes, labels


def scan_label_sets(source: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of the label sets of every record of `source` (one pass over the records)."""
    return label_set_arrays([decode_record(source[i])["labels"] for i in range(len(source))])
