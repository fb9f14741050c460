"""Where a config's dataset lives and how its splits are read: one interface over two on-disk formats.

A dataset is a directory, either
- a mim_jax dataset (``metadata.json`` + ArrayRecord shards; written by `mim_jax.data.ingest` or
  `mim_jax.data.synthetic`), whose elements are msgpack record bytes, or
- a TFDS dataset prepared in the array_record file format (the version directory holding
  ``dataset_info.json``), read without TensorFlow; its elements are {'image': bytes, 'label': int}.

Both are random-access sources grain reads directly; the pipeline's transforms accept both element kinds.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from mim_jax.data import records, synthetic

TFDS_INFO_FILE = "dataset_info.json"


def resolve_dataset_dir(data_cfg) -> str:
    """Directory of ArrayRecord shards + metadata.json for `config.data`; generates the synthetic set if needed."""
    if data_cfg.source == "synthetic":
        s = data_cfg.synthetic
        return synthetic.ensure_dataset(num_train=s.num_train, num_val=s.num_val, image_size=s.image_size,
                                        seed=s.seed, multi_label=bool(s.get("multi_label", False)))
    path = os.path.abspath(os.path.expanduser(data_cfg.path))
    if not os.path.isdir(path):
        raise records.DatasetError(f"data.path={data_cfg.path!r} does not exist or is not a directory; point it at "
                                   f"a dataset written by mim_jax.data (e.g. python -m mim_jax.data.synthetic "
                                   f"--out=DIR) or use --config.data.source=synthetic")
    if not is_tfds_dir(path):
        records.read_metadata(path)
    return path


def is_tfds_dir(path: str) -> bool:
    """Whether `path` is a prepared TFDS dataset (has dataset_info.json and no mim_jax metadata.json)."""
    return (os.path.isfile(os.path.join(path, TFDS_INFO_FILE))
            and not os.path.isfile(os.path.join(path, records.METADATA_FILE)))


@functools.lru_cache(maxsize=8)
def _tfds_builder(path: str):
    """The TFDS builder of a prepared dataset directory (imported lazily: tfds is slow to import)."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder_from_directory(path)
    except Exception as e:  # tfds raises assorted types for a broken directory
        raise records.DatasetError(f"Cannot open the TFDS dataset {path!r} ({type(e).__name__}: {e}); "
                                   f"point data.path at a TFDS version directory with {TFDS_INFO_FILE}.") from e


def open_tfds_split(path: str, split: str) -> Sequence[dict[str, Any]]:
    """A random-access source of {'image': encoded bytes, 'label': int} for `split` of a TFDS directory."""
    import tensorflow_datasets as tfds

    builder = _tfds_builder(path)
    if split not in builder.info.splits:
        raise records.DatasetError(f"Split {split!r} is not in the TFDS dataset {path!r}; available splits: "
                                   f"{sorted(builder.info.splits)}.")
    if "image" not in builder.info.features:
        raise records.DatasetError(f"The TFDS dataset {path!r} has no 'image' feature (features: "
                                   f"{sorted(builder.info.features)}); only image datasets can be read.")
    try:
        return builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    except Exception as e:
        raise records.DatasetError(f"Cannot read split {split!r} of the TFDS dataset {path!r} ({e}); it must be "
                                   f"prepared with file_format='array_record'.") from e


def tfds_class_names(path: str) -> list[str]:
    """Class names of a TFDS dataset's 'label' feature (['unlabeled'] without one)."""
    features = _tfds_builder(path).info.features
    label = features["label"] if "label" in features else None
    return list(label.names) if label is not None and hasattr(label, "names") else ["unlabeled"]


def open_split(dataset_dir: str, split: str) -> Sequence:
    """A random-access source of `split`: record bytes (mim_jax dataset) or example dicts (TFDS)."""
    if is_tfds_dir(dataset_dir):
        return open_tfds_split(dataset_dir, split)
    return records.open_split(dataset_dir, split)


def class_names(dataset_dir: str) -> list[str]:
    """The dataset's class names (label i is class_names[i])."""
    if is_tfds_dir(dataset_dir):
        return tfds_class_names(dataset_dir)
    return records.read_metadata(dataset_dir)["classes"]


def num_examples(dataset_dir: str, split: str) -> int:
    """Number of examples in `split`."""
    if is_tfds_dir(dataset_dir):
        return len(open_tfds_split(dataset_dir, split))
    return records.split_info(dataset_dir, split)["num_examples"]


def tfds_key(split: str, index: int) -> str:
    """The record key of example `index` of a TFDS split (its position is its identity)."""
    return f"{split}/{index}"


def split_index(dataset_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(key_hashes uint64, labels int32) of `split` in source order, for drawing subsets."""
    if not is_tfds_dir(dataset_dir):
        return records.read_index(dataset_dir, split)
    source = open_tfds_split(dataset_dir, split)
    key_hashes = np.array([records.key_hash(tfds_key(split, i)) for i in range(len(source))], np.uint64)
    labels = np.array([int(source[i].get("label", 0)) for i in range(len(source))], np.int32)
    return key_hashes, labels


def split_label_sets(dataset_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [N+1], values int32) of the label sets of `split` (TFDS labels: one-element sets)."""
    if not is_tfds_dir(dataset_dir):
        return records.read_label_sets(dataset_dir, split)
    if tfds_class_names(dataset_dir) == ["unlabeled"]:
        return np.zeros(num_examples(dataset_dir, split) + 1, np.int64), np.zeros(0, np.int32)
    return records.single_label_sets(split_index(dataset_dir, split)[1])


def label_info(dataset_dir: str, split: str = "train") -> dict[str, Any]:
    """What a supervised objective needs to know about the labels of `split`.

    Returns {num_classes, classes, multi_label, class_frequencies (records per class in `split`), num_examples,
    num_labeled (records with a non-empty set), max_set_size}. Raises DatasetError for a dataset without labels
    (class list ['unlabeled'] or no record with a label).
    """
    classes = class_names(dataset_dir)
    offsets, values = split_label_sets(dataset_dir, split)
    lengths = np.diff(offsets)
    metadata = {} if is_tfds_dir(dataset_dir) else records.read_metadata(dataset_dir)
    entry = metadata.get("splits", {}).get(split, {})
    if "class_frequencies" in entry:
        frequencies = list(entry["class_frequencies"])
    else:
        frequencies = np.bincount(values, minlength=len(classes)).tolist()
    if classes == ["unlabeled"] or not values.size:
        raise records.DatasetError(
            f"Split {split!r} of {dataset_dir!r} has no labels (classes {classes[:3]}, {int((lengths > 0).sum())} "
            f"labeled records); a supervised objective needs a labeled dataset: ingest one with --label_key, "
            f"--tags_key + --label_vocab, or class folders (docs/data.md).")
    return {"num_classes": len(classes), "classes": classes,
            "multi_label": bool(entry.get("multi_label", metadata.get("multi_label", False))),
            "class_frequencies": frequencies, "num_examples": len(lengths),
            "num_labeled": int((lengths > 0).sum()), "max_set_size": int(lengths.max(initial=0))}


def num_truncated(dataset_dir: str, split: str, max_labels: int) -> int:
    """How many records of `split` have more than `max_labels` labels (the pipeline keeps their first max_labels)."""
    offsets, _ = split_label_sets(dataset_dir, split)
    return int((np.diff(offsets) > max_labels).sum())


class IndexedSource:
    """The elements `indices` of a random-access source, as a random-access source (a subset view)."""

    def __init__(self, source: Sequence, indices: np.ndarray):
        self._source = source
        self._indices = np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int):
        return self._source[int(self._indices[i])]

    def __repr__(self) -> str:
        return f"IndexedSource({len(self)} of {len(self._source)})"
