"""Tests for mim_jax.data.sources: TFDS array_record datasets and ingested directories behind one interface."""

import io
import itertools
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mim_jax.data import ingest, pipeline, records, sources, subsets

NUM_TRAIN, NUM_TEST = 12, 5


def _jpeg(index: int) -> bytes:
    rng = np.random.default_rng(index)
    small = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((40, 30), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


class MimJaxTestImages(tfds.core.GeneratorBasedBuilder):
    """A tiny labelled JPEG dataset, built locally in the array_record format (no TensorFlow needed)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=["ant", "bee", "cow"])}))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(0, NUM_TRAIN), "test": self._generate_examples(100, NUM_TEST)}

    def _generate_examples(self, start, count):
        for i in range(start, start + count):
            yield f"img{i}", {"image": _jpeg(i), "label": i % 3}


@pytest.fixture(scope="module")
def tfds_dataset(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = MimJaxTestImages(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return str(data_dir), str(builder.data_dir)


@pytest.fixture(scope="module")
def ingested_tfds(tfds_dataset, tmp_path_factory):
    data_dir, _ = tfds_dataset
    out = str(tmp_path_factory.mktemp("ingested") / "ds")
    for split in ("train", "test"):
        ingest.ingest("tfds:mim_jax_test_images", out, split, tfds_data_dir=data_dir, examples_per_shard=5,
                      num_workers=1, progress=False)
    return out


def test_tfds_dir_reads_without_tensorflow_decoding(tfds_dataset):
    _, version_dir = tfds_dataset
    assert sources.is_tfds_dir(version_dir)
    source = sources.open_split(version_dir, "train")
    assert len(source) == NUM_TRAIN == sources.num_examples(version_dir, "train")
    assert sources.class_names(version_dir) == ["ant", "bee", "cow"] and pipeline.num_classes(version_dir) == 3
    images = {source[i]["image"]: int(source[i]["label"]) for i in range(NUM_TRAIN)}
    assert images == {_jpeg(i): i % 3 for i in range(NUM_TRAIN)}  # Raw JPEG bytes, undecoded.
    with pytest.raises(records.DatasetError, match=r"Split 'val' is not in the TFDS dataset .*\['test', 'train'\]"):
        sources.open_split(version_dir, "val")


def test_tfds_ingest_keeps_order_images_labels_and_classes(tfds_dataset, ingested_tfds):
    _, version_dir = tfds_dataset
    metadata = records.read_metadata(ingested_tfds)
    assert metadata["classes"] == ["ant", "bee", "cow"]
    assert metadata["splits"]["train"]["num_examples"] == NUM_TRAIN and len(metadata["splits"]["train"]["shards"]) == 3
    assert metadata["splits"]["test"]["num_examples"] == NUM_TEST
    tfds_source, ours = sources.open_split(version_dir, "train"), records.open_split(ingested_tfds, "train")
    for i in range(NUM_TRAIN):
        record = records.decode_record(ours[i])
        assert (record["image"], record["label"], record["key"]) == (
            tfds_source[i]["image"], tfds_source[i]["label"], f"train/{i}")
    hashes_tfds, labels_tfds = sources.split_index(version_dir, "train")
    hashes_ours, labels_ours = sources.split_index(ingested_tfds, "train")
    np.testing.assert_array_equal(hashes_tfds, hashes_ours)
    np.testing.assert_array_equal(labels_tfds, labels_ours)


def _batches(iterator, n):
    return [{k: np.array(v) for k, v in b.items()} for b in itertools.islice(iterator, n)]


def test_tfds_and_ingested_give_the_same_batches(tfds_dataset, ingested_tfds):
    _, version_dir = tfds_dataset
    spec = subsets.SubsetSpec("random", count=8, seed=3)
    train = dict(global_batch_size=4, image_size=16, seed=0, subset=spec)
    from_tfds = _batches(pipeline.train_batches(version_dir, "train", **train), 4)
    from_ours = _batches(pipeline.train_batches(ingested_tfds, "train", **train), 4)
    evaluate = dict(batch_size=4, image_size=16)
    from_tfds += _batches(pipeline.eval_batches(version_dir, "test", **evaluate), 10)
    from_ours += _batches(pipeline.eval_batches(ingested_tfds, "test", **evaluate), 10)
    assert len(from_tfds) == len(from_ours) == 4 + 2
    for a, b in zip(from_tfds, from_ours):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_resolve_dataset_dir_accepts_both_formats(tfds_dataset, ingested_tfds, tmp_path):
    _, version_dir = tfds_dataset
    for path in (version_dir, ingested_tfds):
        assert sources.resolve_dataset_dir(types.SimpleNamespace(source="arrayrecord", path=path)) == path
    with pytest.raises(records.DatasetError, match=r"metadata.json.* is missing"):
        sources.resolve_dataset_dir(types.SimpleNamespace(source="arrayrecord", path=str(tmp_path)))


def test_tfds_ingest_errors_name_the_dataset(tfds_dataset, tmp_path):
    data_dir, _ = tfds_dataset
    with pytest.raises(records.DatasetError, match=r"tfds:mim_jax_test_images split 'val' cannot be opened"):
        ingest.ingest("tfds:mim_jax_test_images", str(tmp_path / "out"), "val", tfds_data_dir=data_dir,
                      num_workers=1, progress=False)


# ----------------------------------------------------------------------------- label_info


def test_label_info_of_a_multi_label_dataset(tmp_path):
    from mim_jax.data import synthetic

    out = str(tmp_path / "ml")
    synthetic.generate(out, num_train=40, num_val=10, image_size=32, multi_label=True, num_workers=1)
    info = sources.label_info(out)
    source = records.open_split(out, "train")
    sets = [records.decode_record(source[i])["labels"] for i in range(40)]
    # Reference: counted from the decoded records.
    assert info["class_frequencies"] == [sum(c in s for s in sets) for c in range(10)]
    assert (info["num_classes"], info["multi_label"], info["num_examples"]) == (10, True, 40)
    assert info["num_labeled"] == sum(bool(s) for s in sets) and info["max_set_size"] == max(map(len, sets))
    assert info["classes"] == list(synthetic.CLASSES)
    val = sources.label_info(out, "val")
    assert val["multi_label"] is False and val["class_frequencies"] == [1] * 10 and val["max_set_size"] == 1


def test_label_info_of_tfds_and_v1_datasets(tfds_dataset, ingested_tfds):
    _, version_dir = tfds_dataset
    for path in (version_dir, ingested_tfds):
        info = sources.label_info(path)
        assert info["classes"] == ["ant", "bee", "cow"] and info["multi_label"] is False
        assert info["class_frequencies"] == [4, 4, 4] and info["max_set_size"] == 1  # label = i % 3 of 12.


def test_label_info_without_labels_is_a_dataset_error(tmp_path):
    splits = {"train": records.write_split(tmp_path, "train", [(b"x", 0, "a"), (b"y", 0, "b")], 1)}
    records.write_metadata(tmp_path, ["unlabeled"], splits, {})
    with pytest.raises(records.DatasetError, match=r"Split 'train' of .* has no labels .*a supervised objective "
                                                   r"needs a labeled dataset"):
        sources.label_info(str(tmp_path))
    empty = tmp_path / "empty_sets"
    splits = {"train": records.write_split(empty, "train", [(b"x", [], "a")], 1, num_classes=2)}
    records.write_metadata(empty, ["p", "q"], splits, {})
    with pytest.raises(records.DatasetError, match=r"has no labels \(classes \['p', 'q'\], 0 labeled records\)"):
        sources.label_info(str(empty))
