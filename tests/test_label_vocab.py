"""Tests for mim_jax.data.label_vocab: the vocabulary file format, tag normalization and mapping."""

import pytest

from mim_jax.data import label_vocab
from mim_jax.data.records import DatasetError


def test_parse_vocab_ids_aliases_and_blank_lines():
    vocab = label_vocab.parse_vocab(["dog\tpuppy, Doggo\n", "\n", "golden_retriever\tgolden retriever\n", "cat"],
                                    "v.txt")
    assert vocab.classes == ("dog", "golden_retriever", "cat")
    assert vocab.lookup == {"dog": 0, "puppy": 0, "doggo": 0, "golden_retriever": 1, "cat": 2}


def test_normalize_and_hashtags():
    assert label_vocab.normalize("  #Golden-Retriever ") == "golden_retriever"
    assert label_vocab.normalize("Golden  Retriever") == "golden_retriever"
    assert label_vocab.hashtags("a #Beach day#sun, #ünïcode and # alone #x-y") == ["Beach", "sun", "ünïcode", "x-y"]
    assert label_vocab.tags_from_value(["a", 3, True]) == ["a", 3, "True"]
    assert label_vocab.tags_from_value("pic #cat #dog") == ["cat", "dog"]
    assert label_vocab.tags_from_value(None) == [] and label_vocab.tags_from_value(4) == [4]


def test_map_tags_counts_and_order():
    vocab = label_vocab.parse_vocab(["dog\tpuppy", "cat", "beach"], "v.txt")
    mapping = vocab.map_tags(["#Beach", "puppy", "selfie", "dog", 1, "tbt"], "sample k")
    # First-seen order of distinct classes; every matched tag counts (dog twice), unknown ones are dropped.
    assert mapping == label_vocab.TagMapping(labels=(2, 0, 1), mapped=4, unknown=2)
    assert vocab.map_tags([], "k") == label_vocab.TagMapping((), 0, 0)
    with pytest.raises(DatasetError, match=r"sample k: class id 3 is beyond the 3 classes of --label_vocab=v.txt"):
        vocab.map_tags([3], "sample k")
    with pytest.raises(DatasetError, match=r"class id -1 is beyond"):
        vocab.map_tags([-1], "sample k")


def test_read_vocab_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"--label_vocab=.*missing.txt cannot be read"):
        label_vocab.read_vocab(str(tmp_path / "missing.txt"))
    with pytest.raises(DatasetError, match=r"line 1: '#' is empty after normalizing"):
        label_vocab.parse_vocab(["#"], "v.txt")
