"""Tests for mim_jax.data.subsets: the hash, nesting, class balance, class subsets."""

import numpy as np
import pytest

from mim_jax.data import records, subsets

MASK = (1 << 64) - 1


def _splitmix64_reference(state: int) -> int:
    """Vigna's splitmix64 next(): advance by the golden gamma, then mix (pure-Python ints)."""
    z = (state + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _keys(n, prefix="coyo"):
    return np.array([records.key_hash(f"{prefix}/{i:07d}") for i in range(n)], np.uint64)


def test_splitmix64_matches_the_reference():
    assert int(subsets.splitmix64(np.uint64(0))) == 0xE220A8397B1DCDAF  # First output of the seed-0 generator.
    xs = [0, 1, 12345, MASK, 0x0123456789ABCDEF]
    got = subsets.splitmix64(np.array(xs, np.uint64))
    assert [int(v) for v in got] == [_splitmix64_reference(x) for x in xs]
    seed_mix = _splitmix64_reference(7)
    assert [int(v) for v in subsets.scores(np.array(xs, np.uint64), 7)] == [
        _splitmix64_reference(x ^ seed_mix) for x in xs]


def test_key_hash_is_blake2b_of_the_key():
    import hashlib

    assert records.key_hash("a/b.jpg") == int.from_bytes(
        hashlib.blake2b(b"a/b.jpg", digest_size=8).digest(), "little")


def test_random_subsets_nest_and_depend_only_on_keys_and_seed():
    key_hashes = _keys(5000)
    small, medium, large = (set(subsets.random_subset(key_hashes, n, seed=3)) for n in (1000, 2000, 4000))
    assert (len(small), len(medium), len(large)) == (1000, 2000, 4000)
    assert small <= medium <= large
    # Membership is a function of the key: reordering the records moves the same keys.
    perm = np.random.default_rng(0).permutation(5000)
    assert set(perm[subsets.random_subset(key_hashes[perm], 1000, seed=3)]) == small
    # Another seed draws an independent subset: overlap ~ 1000 * 1000 / 5000 = 200 (sd ~ 11).
    other = set(subsets.random_subset(key_hashes, 1000, seed=4))
    assert 150 < len(small & other) < 250
    # Scores are uniform: the 1000 chosen keys spread evenly over the 5 blocks of 1000 records.
    counts = np.bincount(np.fromiter(small, int) // 1000, minlength=5)
    assert counts.min() > 150 and counts.max() < 250


def test_lowest_equals_a_stable_sort_prefix_with_ties():
    values = np.random.default_rng(1).integers(0, 20, size=500).astype(np.uint64)  # Many ties.
    for count in (1, 37, 250, 500):
        np.testing.assert_array_equal(subsets.lowest(values, count),
                                      np.sort(np.argsort(values, kind="stable")[:count]))


def test_balanced_fractions_nest_and_match_each_class_share():
    rng = np.random.default_rng(0)
    sizes = np.array([50, 73, 100, 141, 38, 99, 120, 64, 87, 130])
    labels = rng.permutation(np.repeat(np.arange(10), sizes))
    key_hashes = _keys(len(labels), "in1k")
    previous = set()
    for fraction in (0.1, 0.2, 0.5, 1.0):
        chosen = subsets.balanced_subset(key_hashes, labels, fraction, seed=0)
        per_class = np.bincount(labels[chosen], minlength=10)
        assert np.all(np.abs(per_class - fraction * sizes) <= 0.5)  # Within 1 of the exact share.
        np.testing.assert_array_equal(per_class, np.floor(fraction * sizes + 0.5))
        assert previous <= set(chosen)
        previous = set(chosen)
    assert previous == set(range(len(labels)))


def test_balanced_equal_classes_get_counts_within_one():
    labels = np.repeat(np.arange(7), 30)
    chosen = subsets.balanced_subset(_keys(len(labels)), labels, 0.25, seed=1)
    per_class = np.bincount(labels[chosen])
    assert per_class.max() - per_class.min() <= 1 and per_class.min() == 8  # round(7.5) = 8


def test_class_subsets_nest_and_take_whole_classes():
    names = [f"n{i:08d}" for i in range(20)]
    labels = np.repeat(np.arange(20), 5)
    five = subsets.class_subset(labels, names, 5, seed=0)
    ten = subsets.class_subset(labels, names, 10, seed=0)
    assert len(five) == 25 and len(ten) == 50 and set(five) <= set(ten)
    chosen_classes = set(labels[ten])
    assert len(chosen_classes) == 10
    np.testing.assert_array_equal(ten, np.flatnonzero(np.isin(labels, list(chosen_classes))))


def test_select_dispatch_and_errors():
    key_hashes, labels = _keys(100), np.arange(100) % 4
    names = ["a", "b", "c", "d"]
    assert subsets.select(subsets.SubsetSpec(), key_hashes, labels, names) is None
    by_fraction = subsets.select(subsets.SubsetSpec("random", fraction=0.25, seed=2), key_hashes, labels, names)
    np.testing.assert_array_equal(by_fraction, subsets.random_subset(key_hashes, 25, seed=2))
    with pytest.raises(records.DatasetError, match=r"data.subset.count=101 must be in \[1, 100\]"):
        subsets.select(subsets.SubsetSpec("random", count=101), key_hashes, labels, names)
    with pytest.raises(records.DatasetError, match=r"data.subset.num_classes=5 must be in \[1, 4\]"):
        subsets.select(subsets.SubsetSpec("classes", num_classes=5), key_hashes, labels, names)
    spec = subsets.SubsetSpec.from_config(dict(kind="balanced", count=0, fraction=0.5, num_classes=0, seed=9))
    assert spec == subsets.SubsetSpec("balanced", 0, 0.5, 0, 9)


def test_class_subset_of_label_sets_keeps_records_holding_a_chosen_class():
    names = [f"c{i}" for i in range(6)]
    sets = [[0, 3], [], [5], [1, 2], [3], [4, 0], [2]]
    offsets, values = records.label_set_arrays(sets)
    labels = np.array([(s or [-1])[0] for s in sets])
    for k in (1, 2, 4):
        name_scores = subsets.scores(np.array([records.key_hash(n) for n in names], np.uint64), 7)
        chosen = set(np.argsort(name_scores, kind="stable")[:k].tolist())  # Reference: the k lowest names.
        got = subsets.class_subset(labels, names, k, seed=7, label_sets=(offsets, values))
        assert got.tolist() == [i for i, s in enumerate(sets) if chosen & set(s)]
