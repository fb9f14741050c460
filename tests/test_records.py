"""Tests for mim_jax.data.records: shard writing, metadata, and error messages."""

import json
import os

import msgpack
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
    assert records.decode_record(raw) == {"image": b"\xff\xd8jpeg", "label": 7, "key": "shapes/train/ü-1",
                                          "labels": [7]}
    # A single-label record is byte for byte what the v1 writer stored: msgpack of the three fields.
    assert raw == msgpack.packb({"image": b"\xff\xd8jpeg", "label": 7, "key": "shapes/train/ü-1"})


def test_label_set_records_round_trip():
    for labels, first in (([5, 2, 9], 5), ([3], 3), ([], -1)):
        raw = records.encode_record(b"img", labels, "k")
        assert msgpack.unpackb(raw) == {"image": b"img", "label": first, "key": "k", "labels": labels}
        assert records.decode_record(raw) == {"image": b"img", "label": first, "key": "k", "labels": labels}
    # A v1-style record with a negative label (unlabeled) reads as the empty set.
    assert records.decode_record(msgpack.packb({"image": b"x", "label": -1, "key": "u"}))["labels"] == []
    with pytest.raises(ValueError, match=r"Record 'k': labels=\[1, 1\] must be distinct class ids >= 0"):
        records.encode_record(b"img", [1, 1], "k")
    with pytest.raises(ValueError, match=r"labels=\[-2\] must be distinct"):
        records.encode_record(b"img", [-2], "k")


def test_multi_label_split_metadata_and_label_sets(tmp_path):
    sets = [[0, 2], [], [1], [2, 1, 0], [2]]
    examples = [(b"i%d" % i, s, f"ml/{i}") for i, s in enumerate(sets)]
    splits = {"train": records.write_split(tmp_path, "train", examples, 2, num_classes=3),
              "val": records.write_split(tmp_path, "val", [(b"v", 1, "v/0"), (b"w", 2, "v/1")], 1, num_classes=3)}
    records.write_metadata(tmp_path, ["a", "b", "c"], splits, {})
    metadata = records.read_metadata(tmp_path)
    assert metadata["format"] == "mim_jax.records/v2" and metadata["multi_label"] is True
    # Reference: counts of each class over the sets, by hand.
    assert metadata["splits"]["train"]["class_frequencies"] == [2, 2, 3]
    assert metadata["splits"]["train"]["multi_label"] is True and metadata["splits"]["val"]["multi_label"] is False
    assert metadata["splits"]["val"]["class_frequencies"] == [0, 1, 1]
    assert metadata["class_frequencies"] == [2, 3, 4]
    order = [0, 2, 4, 1, 3]  # Round-robin over 2 shards.
    source = records.open_split(tmp_path, "train")
    assert [records.decode_record(source[i])["labels"] for i in range(5)] == [sets[i] for i in order]
    offsets, values = records.read_label_sets(tmp_path, "train")  # No index: scanned.
    assert [values[offsets[i]:offsets[i + 1]].tolist() for i in range(5)] == [sets[i] for i in order]
    _, labels = records.read_index(tmp_path, "train")
    assert labels.tolist() == [(sets[i] or [-1])[0] for i in order]
    with pytest.raises(ValueError, match=r"Record 'x': class id 3 in labels=\[0, 3\] is beyond the 3 classes"):
        records.write_split(tmp_path / "bad", "train", [(b"i", [0, 3], "x")], 1, num_classes=3)
    with pytest.raises(ValueError, match=r"Record 'y': class id 5 .* beyond the 3 classes"):
        records.write_split(tmp_path / "bad", "train", [(b"i", 5, "y")], 1, num_classes=3)


def test_v1_dataset_reads_as_one_element_sets(tmp_path):
    # A dataset exactly as the v1 writer left it: single-label msgpack records, format string v1, no
    # multi_label / class_frequencies.
    with records.ShardWriter(tmp_path / "train-00000-of-00001.array_record") as writer:
        for i, label in enumerate([2, 0, 1, 2]):
            writer.write(msgpack.packb({"image": b"j%d" % i, "label": label, "key": f"old/{i}"}))
    (tmp_path / "metadata.json").write_text(json.dumps({
        "format": "mim_jax.records/v1", "classes": ["a", "b", "c"], "provenance": {},
        "splits": {"train": {"num_examples": 4, "shards": ["train-00000-of-00001.array_record"]}}}))
    metadata = records.read_metadata(tmp_path)
    assert metadata["format"] == records.FORMAT_V1 and "multi_label" not in metadata
    source = records.open_split(tmp_path, "train")
    assert [records.decode_record(source[i])["labels"] for i in range(4)] == [[2], [0], [1], [2]]
    offsets, values = records.read_label_sets(tmp_path, "train")
    assert offsets.tolist() == [0, 1, 2, 3, 4] and values.tolist() == [2, 0, 1, 2]
    # A v1 index (key hashes and labels only) gives one-element sets too.
    key_hashes, labels = records.read_index(tmp_path, "train")
    metadata["splits"]["train"]["index"] = records.write_index(tmp_path, "train", key_hashes, labels)
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    offsets, values = records.read_label_sets(tmp_path, "train")
    assert offsets.tolist() == [0, 1, 2, 3, 4] and values.tolist() == [2, 0, 1, 2]


def test_index_with_label_sets_round_trip(tmp_path):
    import numpy as np

    sets = [[4, 1], [], [0], [3, 2, 1]]
    offsets, values = records.label_set_arrays(sets)
    assert offsets.tolist() == [0, 2, 2, 3, 6] and values.tolist() == [4, 1, 0, 3, 2, 1]
    _write_toy(tmp_path, num_train=4, num_shards=1)
    metadata = records.read_metadata(tmp_path)
    metadata["splits"]["train"]["index"] = records.write_index(
        tmp_path, "train", np.arange(4, dtype=np.uint64), np.array([4, -1, 0, 3]), (offsets, values))
    records.write_metadata(tmp_path, metadata["classes"] + ["d", "e"], metadata["splits"], {})
    got_offsets, got_values = records.read_label_sets(tmp_path, "train")
    assert got_offsets.tolist() == offsets.tolist() and got_values.tolist() == values.tolist()
    with pytest.raises(ValueError, match="label offsets"):
        records.write_index(tmp_path, "train", np.arange(4, dtype=np.uint64), np.zeros(4), (offsets[:-1], values))


def test_class_frequencies_must_match_the_classes(tmp_path):
    _write_toy(tmp_path)
    path = tmp_path / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["splits"]["train"]["class_frequencies"] = [1, 2]
    path.write_text(json.dumps(metadata))
    with pytest.raises(records.DatasetError, match=r"'splits.train.class_frequencies' must list one count >= 0 "
                                                   r"for each of the 3 classes"):
        records.read_metadata(tmp_path)


def test_decode_record_rejects_foreign_records():
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
        "format": "mim_jax.records/v2",
        "classes": ["a", "b", "c"],
        "multi_label": False,
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
