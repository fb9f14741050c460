"""Nested training subsets drawn by hashing record keys: random by count, class-balanced fractions, class subsets.

Every record gets a score ``splitmix64(key_hash ^ splitmix64(seed))``, a pure function of its key
and the subset seed. A subset keeps the records with the lowest scores (ties broken by record
index), so for one seed subset(n) is inside subset(m) whenever n <= m, on any machine and without
copying data. Kinds (config ``data.subset``):

- ``all``: every record (the default).
- ``random``: the ``count`` lowest-scored records (Coyo-style 0.5M in 1M in 5M ...); ``fraction``
  instead means ``round(fraction * N)`` records.
- ``balanced``: in each class the ``round(fraction * n_class)`` lowest-scored records (ImageNet
  10% / 20% / 50% per class), so each class gets its share to within one image.
- ``classes``: every record of the ``num_classes`` classes whose names score lowest (ImageNet-100
  style); labels keep their original values. On a multi-label split, every record whose label set
  holds one of those classes (its other labels are kept).

``balanced`` on a multi-label split balances over each record's first label (its ``label``; records
with an empty set form one group of their own).

Cost: one hash per record (stored by ingest in the split's index file, else one scan of the
records), then O(N) selection for ``random`` and one sort of N uint64 scores for ``balanced``
(measured in docs/data.md, Subsets).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from mim_jax.data.records import DatasetError, key_hash

SUBSET_KINDS = ("all", "random", "balanced", "classes")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclasses.dataclass(frozen=True)
class SubsetSpec:
    """Which records of a split to train on (see the module docstring for the kinds)."""

    kind: str = "all"
    count: int = 0
    fraction: float = 0.0
    num_classes: int = 0
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: Any) -> SubsetSpec:
        """Builds the spec from `config.data.subset` (a ConfigDict or mapping)."""
        return cls(kind=str(cfg["kind"]), count=int(cfg["count"]), fraction=float(cfg["fraction"]),
                   num_classes=int(cfg["num_classes"]), seed=int(cfg["seed"]))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer, elementwise on uint64 (a bijection that mixes every bit)."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2**64, as the algorithm intends.
        z = np.asarray(x, np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def scores(key_hashes: np.ndarray, seed: int) -> np.ndarray:
    """A uniform uint64 score per key hash for `seed`; different seeds give independent orders."""
    seed_mix = splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    return splitmix64(np.asarray(key_hashes, np.uint64) ^ seed_mix)


def random_subset(key_hashes: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Sorted record indices of the `count` lowest-scored keys."""
    if not 0 < count <= len(key_hashes):
        raise DatasetError(f"data.subset.count={count} must be in [1, {len(key_hashes)}] (the split's size); "
                           f"lower it or use a larger split.")
    return lowest(scores(key_hashes, seed), count)


def lowest(values: np.ndarray, count: int) -> np.ndarray:
    """Sorted indices of the `count` smallest values, ties broken by index (a stable-sort prefix, in O(N))."""
    threshold = np.partition(values, count - 1)[count - 1]
    below = np.flatnonzero(values < threshold)
    ties = np.flatnonzero(values == threshold)[:count - len(below)]
    return np.sort(np.concatenate([below, ties]))


def balanced_subset(key_hashes: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted record indices of the round(fraction * n_c) lowest-scored keys of every class c."""
    labels = np.asarray(labels, np.int64)
    by_score = np.argsort(scores(key_hashes, seed), kind="stable")
    compact = labels.astype(np.int16) if labels.max(initial=0) < 2**15 else labels  # int16: radix sort
    order = by_score[np.argsort(compact[by_score], kind="stable")]  # By class, then score, then index.
    sorted_labels = labels[order]
    classes, starts, sizes = np.unique(sorted_labels, return_index=True, return_counts=True)
    quotas = np.floor(fraction * sizes + 0.5).astype(np.int64)
    class_pos = np.searchsorted(classes, sorted_labels)
    rank_in_class = np.arange(len(order)) - starts[class_pos]
    return np.sort(order[rank_in_class < quotas[class_pos]])


def class_subset(labels: np.ndarray, class_names: Sequence[str], num_classes: int, seed: int,
                 label_sets: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Sorted record indices of every record whose class is among the `num_classes` lowest-scored names.

    With `label_sets` = (offsets, values) (multi-label), a record is kept when any of its labels is chosen.
    """
    if not 0 < num_classes <= len(class_names):
        raise DatasetError(f"data.subset.num_classes={num_classes} must be in [1, {len(class_names)}] "
                           f"(the dataset's classes); lower it.")
    name_hashes = np.array([key_hash(name) for name in class_names], np.uint64)
    chosen = np.argsort(scores(name_hashes, seed), kind="stable")[:num_classes]
    if label_sets is None:
        return np.flatnonzero(np.isin(np.asarray(labels), chosen))
    offsets, values = label_sets
    hits = np.isin(values, chosen)
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))  # The record of each label value.
    return np.unique(owner[hits])


def select(spec: SubsetSpec, key_hashes: np.ndarray, labels: np.ndarray,
           class_names: Sequence[str], label_sets: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray | None:
    """Record indices of the subset `spec` (sorted), or None for kind 'all'; `label_sets` for multi-label splits."""
    if spec.kind == "all":
        return None
    if spec.kind == "random":
        count = spec.count or int(np.floor(spec.fraction * len(key_hashes) + 0.5))
        return random_subset(key_hashes, count, spec.seed)
    if spec.kind == "balanced":
        indices = balanced_subset(key_hashes, labels, spec.fraction, spec.seed)
        if not len(indices):
            raise DatasetError(f"data.subset.fraction={spec.fraction} keeps no image of any class; raise it.")
        return indices
    if spec.kind == "classes":
        return class_subset(labels, class_names, spec.num_classes, spec.seed, label_sets)
    raise DatasetError(f"data.subset.kind={spec.kind!r}: use one of {SUBSET_KINDS}.")
