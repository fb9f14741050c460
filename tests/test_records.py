"""Tests for mim_jax.data.records: shard writing, metadata, and error messages."""

import json
import os

import pytest

from mim_jax.data import records


def _examples(n):
    return [(bytes([i]) * (i + 1), i % 3, f"toy/train/{i:03d}") for i in range(n)]


def _write_toy(out_dir, num_train=10, num_shards=3):
    splits = {
        "train": records.write_split(out_dir, "train", _examples(num_train), num_shards),
        "val": records.write_split(out_dir, "val", _examples(4), 1),
    }
    records.write_metadata(out_dir, ["a", "b", "c"], splits, {"source": "unit-test"})
    return splits


def test_encode_decode_round_trip():
    raw = records.encode_record(b"\xff\xd8jpeg", 7, "shapes/train/ü-1")
    assert records.decode_record(raw) == {"image": b"\xff\xd8jpeg", "label": 7, "key": "shapes/train/ü-1"}


def test_decode_record_rejects_foreign_records():
    import msgpack

    with pytest.raises(records.DatasetError, match="'image', 'label', 'key'"):
        records.decode_record(msgpack.packb({"image": b"x"}))


def test_write_read_round_trip(tmp_path):
    _write_toy(tmp_path, num_train=10, num_shards=3)
    source = records.open_split(tmp_path, "train")
    assert len(source) == 10
    got = [records.decode_record(source[i]) for i in range(len(source))]
    # Round-robin dealing: shard 0 holds examples 0, 3, 6, 9; shard 1 holds 1, 4, 7; shard 2 2, 5, 8.
    order = [0, 3, 6, 9, 1, 4, 7, 2, 5, 8]
    expected = _examples(10)
    assert [(r["image"], r["label"], r["key"]) for r in got] == [expected[i] for i in order]


def test_metadata_contents(tmp_path):
    splits = _write_toy(tmp_path, num_train=10, num_shards=3)
    metadata = records.read_metadata(tmp_path)
    assert metadata == {
        "format": "mim_jax.records/v1",
        "classes": ["a", "b", "c"],
        "splits": {
            "train": {"num_examples": 10, "shards": [
                "train-00000-of-00003.array_record",
                "train-00001-of-00003.array_record",
                "train-00002-of-00003.array_record"]},
            "val": {"num_examples": 4, "shards": ["val-00000-of-00001.array_record"]},
        },
        "provenance": {"source": "unit-test"},
    }
    assert metadata["splits"] == splits
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["metadata.json", "val-00000-of-00001.array_record"] + splits["train"]["shards"])
    assert records.split_info(tmp_path, "val") == {"num_examples": 4,
                                                   "shards": ["val-00000-of-00001.array_record"]}


def test_shard_writer_leaves_no_file_on_error(tmp_path):
    path = tmp_path / "train-00000-of-00001.array_record"
    with pytest.raises(RuntimeError):
        with records.ShardWriter(path) as writer:
            writer.write(records.encode_record(b"x", 0, "k"))
            raise RuntimeError("crash while writing")
    assert os.listdir(tmp_path) == []


def test_shard_writer_uses_temp_name_until_closed(tmp_path):
    path = tmp_path / "s.array_record"
    writer = records.ShardWriter(path)
    writer.write(b"abc")
    assert not path.exists()
    writer.close()
    assert os.listdir(tmp_path) == ["s.array_record"]
    assert writer.num_records == 1


def test_missing_dir_error_says_how_to_create(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(records.DatasetError, match=r"nope.*does not exist.*python -m mim_jax.data.synthetic --out="):
        records.read_metadata(missing)


def test_missing_metadata_error(tmp_path):
    records.write_split(tmp_path, "train", _examples(2), 1)  # A generation killed before metadata.
    with pytest.raises(records.DatasetError, match=r"metadata.json.*is missing.*mim_jax.data.synthetic"):
        records.open_split(tmp_path, "train")


def test_malformed_metadata_errors_name_the_field(tmp_path):
    _write_toy(tmp_path)
    path = tmp_path / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["splits"]["train"]["num_examples"] = "ten"
    path.write_text(json.dumps(metadata))
    with pytest.raises(records.DatasetError, match=r"splits\.train\.num_examples"):
        records.read_metadata(tmp_path)
    path.write_text("{not json")
    with pytest.raises(records.DatasetError, match="not valid JSON"):
        records.read_metadata(tmp_path)


def test_unknown_split_lists_available(tmp_path):
    _write_toy(tmp_path)
    with pytest.raises(records.DatasetError, match=r"'test'.*available splits: \['train', 'val'\]"):
        records.open_split(tmp_path, "test")


def test_record_count_mismatch_is_reported(tmp_path):
    _write_toy(tmp_path)
    path = tmp_path / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["splits"]["val"]["num_examples"] = 5
    path.write_text(json.dumps(metadata))
    with pytest.raises(records.DatasetError, match="has 4 records but metadata.json says num_examples=5"):
        records.open_split(tmp_path, "val")


def test_missing_shard_is_reported(tmp_path):
    splits = _write_toy(tmp_path)
    os.remove(tmp_path / splits["train"]["shards"][1])
    with pytest.raises(records.DatasetError, match="incomplete: missing shard"):
        records.open_split(tmp_path, "train")


def test_index_round_trip_and_scan_fallback(tmp_path):
    import numpy as np

    _write_toy(tmp_path)
    source = records.open_split(tmp_path, "train")
    # No index in the split entry: read_index scans the records (order = record order).
    key_hashes, labels = records.read_index(tmp_path, "train")
    decoded = [records.decode_record(source[i]) for i in range(len(source))]
    assert list(key_hashes) == [records.key_hash(r["key"]) for r in decoded]
    assert list(labels) == [r["label"] for r in decoded] and key_hashes.dtype == np.uint64
    # With an index file named in metadata.json it is read from there.
    metadata = records.read_metadata(tmp_path)
    metadata["splits"]["train"]["index"] = records.write_index(tmp_path, "train", key_hashes[::-1], labels[::-1])
    records.write_metadata(tmp_path, metadata["classes"], metadata["splits"], metadata["provenance"])
    got_hashes, got_labels = records.read_index(tmp_path, "train")
    assert list(got_hashes) == list(key_hashes[::-1]) and list(got_labels) == list(labels[::-1])
    records.write_index(tmp_path, "train", key_hashes[:3], labels[:3])
    with pytest.raises(records.DatasetError, match=r"train-index.npz' indexes 3 records but split 'train' has 10"):
        records.read_index(tmp_path, "train")
