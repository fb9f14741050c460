"""Tests for mim_jax.data.synthetic: determinism, counts, balance, caching and atomicity."""

import collections
import io
import os

import numpy as np
import pytest
from PIL import Image

from mim_jax.data import records, synthetic

SMALL = dict(num_train=60, num_val=20, image_size=40)


def _all_records(dataset_dir, split):
    source = records.open_split(dataset_dir, split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes") / "ds"
    synthetic.generate(str(out), seed=0, num_shards=2, **SMALL)
    return str(out)


def test_same_seed_gives_identical_records_and_other_seed_differs(small_dataset, tmp_path):
    again = tmp_path / "again"
    other = tmp_path / "other"
    synthetic.generate(str(again), seed=0, num_shards=2, **SMALL)
    synthetic.generate(str(other), seed=1, num_shards=2, **SMALL)
    for split in ("train", "val"):
        base = _all_records(small_dataset, split)
        assert _all_records(again, split) == base
        different = [a != b for a, b in zip(_all_records(other, split), base)]
        assert all(different)


def test_image_depends_only_on_seed_split_index(small_dataset):
    by_key = {r["key"]: r for r in map(records.decode_record, _all_records(small_dataset, "val"))}
    image, label, key = synthetic.make_example(0, "val", 13, SMALL["image_size"])
    assert key == "shapes/val/000013"
    assert by_key[key] == {"image": image, "label": label, "key": key, "labels": [label]}


@pytest.mark.slow
def test_worker_processes_give_the_same_records(small_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "_PARALLEL_MIN_EXAMPLES", 0)
    out = tmp_path / "parallel"
    synthetic.generate(str(out), seed=0, num_shards=2, num_workers=2, **SMALL)
    assert _all_records(out, "train") == _all_records(small_dataset, "train")


def test_counts_classes_and_balance(small_dataset):
    metadata = records.read_metadata(small_dataset)
    assert metadata["classes"] == list(synthetic.CLASSES) and len(metadata["classes"]) == 10
    assert {s: e["num_examples"] for s, e in metadata["splits"].items()} == {"train": 60, "val": 20}
    assert metadata["provenance"]["seed"] == 0 and metadata["provenance"]["image_size"] == 40
    for split, n in (("train", 60), ("val", 20)):
        decoded = [records.decode_record(r) for r in _all_records(small_dataset, split)]
        assert collections.Counter(r["label"] for r in decoded) == {c: n // 10 for c in range(10)}
        assert sorted(r["key"] for r in decoded) == [f"shapes/{split}/{i:06d}" for i in range(n)]


def test_images_decode_to_requested_size(small_dataset):
    for raw in _all_records(small_dataset, "val"):
        image = Image.open(io.BytesIO(records.decode_record(raw)["image"]))
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (40, 40))


def test_shape_colour_contrasts_with_background():
    # The class shape is painted in a colour >= 120 (L2, 0-255 RGB) away from the mean background
    # under it, so the shape is visible whatever the random colours.
    rng = np.random.default_rng(0)
    references = rng.uniform(0, 255, size=(500, 3))
    distances = [np.linalg.norm(np.subtract(synthetic._contrasting_colour(ref, rng), ref))
                 for ref in references]
    assert min(distances) >= 120


def test_default_sizes():
    import inspect

    params = inspect.signature(synthetic.generate).parameters
    assert params["num_train"].default == 20000
    assert params["num_val"].default == 2500 >= 2000
    assert params["image_size"].default == 72


def test_ensure_dataset_generates_once(tmp_path, monkeypatch):
    path = synthetic.ensure_dataset(str(tmp_path), seed=3, **SMALL)
    assert os.path.dirname(path) == str(tmp_path) and os.path.basename(path).startswith("shapes-")
    assert records.read_metadata(path)["provenance"]["seed"] == 3
    mtime = os.stat(os.path.join(path, "metadata.json")).st_mtime_ns

    def must_not_generate(*args, **kwargs):
        raise AssertionError("ensure_dataset regenerated a complete dataset")

    monkeypatch.setattr(synthetic, "generate", must_not_generate)
    assert synthetic.ensure_dataset(str(tmp_path), seed=3, **SMALL) == path
    assert os.stat(os.path.join(path, "metadata.json")).st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(path)]  # No temp dirs left behind.


def test_ensure_dataset_params_change_the_path(tmp_path):
    a = synthetic.cache_path(str(tmp_path), seed=0, **SMALL)
    b = synthetic.cache_path(str(tmp_path), seed=1, **SMALL)
    c = synthetic.cache_path(str(tmp_path), seed=0, **{**SMALL, "image_size": 48})
    assert len({a, b, c}) == 3


def test_default_cache_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MIM_JAX_CACHE", str(tmp_path / "cache"))
    assert synthetic.cache_path(seed=0).startswith(str(tmp_path / "cache") + os.sep + "shapes-")
    monkeypatch.delenv("MIM_JAX_CACHE")
    assert synthetic.default_cache_root() == os.path.expanduser("~/.cache/mim_jax")


def test_killed_generation_never_looks_complete(tmp_path, monkeypatch):
    path = synthetic.cache_path(str(tmp_path), seed=0, **SMALL)
    # A generation killed before its rename leaves only a temp sibling with shards and no metadata.
    leftover = path + ".tmp-deadbeef"
    records.write_split(leftover, "train", [(b"x", 0, "k")], 1)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(records, "write_metadata", crash)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_dataset(str(tmp_path), seed=0, **SMALL)
    assert not os.path.exists(path)  # The crashed generation left nothing under the final name...
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(leftover)]  # ...and cleaned its temp dir.
    monkeypatch.undo()
    assert synthetic.ensure_dataset(str(tmp_path), seed=0, **SMALL) == path
    assert records.read_metadata(path)["splits"]["train"]["num_examples"] == 60


def test_incomplete_dataset_at_final_path_is_an_error(tmp_path):
    path = synthetic.cache_path(str(tmp_path), seed=0, **SMALL)
    os.makedirs(path)
    with pytest.raises(records.DatasetError, match="not a complete shapes dataset"):
        synthetic.ensure_dataset(str(tmp_path), seed=0, **SMALL)


def test_generate_refuses_existing_dir(small_dataset):
    with pytest.raises(FileExistsError, match="already exists"):
        synthetic.generate(small_dataset, **SMALL)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    synthetic.main([f"--out={out}", "--num_train=20", "--num_val=10", "--image_size=32", "--seed=5"])
    metadata = records.read_metadata(out)
    assert metadata["provenance"]["seed"] == 5
    assert {s: e["num_examples"] for s, e in metadata["splits"].items()} == {"train": 20, "val": 10}
    assert "Wrote" in capsys.readouterr().out


# ----------------------------------------------------------------------------- multi-label variant

ML = dict(num_train=300, num_val=20, image_size=40)


@pytest.fixture(scope="module")
def multi_label_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_ml") / "ds"
    synthetic.generate(str(out), seed=0, num_shards=2, multi_label=True, num_workers=1, **ML)
    return str(out)


def _reference_families(seed, index):
    """The shape families drawn for multi-label train image `index`, replaying the generator's first draws."""
    rng = np.random.default_rng([seed, 0, index, synthetic._MULTI_LABEL_STREAM])
    count = int(rng.integers(1, synthetic.MAX_SHAPES + 1))
    families = [int(f) for f in rng.choice(10, size=count, replace=False)]
    return families


def test_multi_label_records_metadata_and_val_split(multi_label_dataset):
    metadata = records.read_metadata(multi_label_dataset)
    assert metadata["multi_label"] is True and metadata["splits"]["train"]["multi_label"] is True
    assert metadata["splits"]["val"]["multi_label"] is False
    assert metadata["provenance"]["tag_drop_rate"] == synthetic.TAG_DROP_RATE
    train = [records.decode_record(r) for r in _all_records(multi_label_dataset, "train")]
    # class_frequencies = the count of each class over the stored label sets.
    counts = collections.Counter(c for r in train for c in r["labels"])
    assert metadata["splits"]["train"]["class_frequencies"] == [counts[c] for c in range(10)]
    for r in train:
        assert len(set(r["labels"])) == len(r["labels"]) <= synthetic.MAX_SHAPES + 1
        assert r["label"] == (r["labels"][0] if r["labels"] else -1)
    # The val split is the standard dataset's val split, byte for byte (same seed and size).
    val = [records.decode_record(r) for r in _all_records(multi_label_dataset, "val")]
    for r in val:
        index = int(r["key"].rsplit("/", 1)[1])
        image, label, key = synthetic.make_example(0, "val", index, ML["image_size"])
        assert (r["image"], r["label"], r["labels"], r["key"]) == (image, label, [label], key)


def test_multi_label_tag_noise_rates(multi_label_dataset):
    train = {r["key"]: r for r in map(records.decode_record, _all_records(multi_label_dataset, "train"))}
    dropped = added = present = 0
    for key, r in train.items():
        families = _reference_families(0, int(key.rsplit("/", 1)[1]))
        assert 1 <= len(families) <= synthetic.MAX_SHAPES
        kept = [f for f in r["labels"] if f in families]
        wrong = [f for f in r["labels"] if f not in families]
        assert len(wrong) <= 1
        present += len(families)
        dropped += len(families) - len(kept)
        added += len(wrong)
    n = len(train)
    # Binomial rates within 4 standard errors of the stated ones (~600 true tags, 300 images).
    p, q = synthetic.TAG_DROP_RATE, synthetic.TAG_ADD_RATE
    assert abs(dropped / present - p) < 4 * np.sqrt(p * (1 - p) / present)
    assert abs(added / n - q) < 4 * np.sqrt(q * (1 - q) / n)
    assert abs(present / n - 2.0) < 4 * np.sqrt(2 / 3 / n)  # 1..3 shapes, uniform: mean 2, variance 2/3.


def test_noisy_tags_rules():
    rng = np.random.default_rng(0)
    assert synthetic.noisy_tags([3, 5], rng, drop_rate=0.0, add_rate=0.0) in ([3, 5], [5, 3])
    assert synthetic.noisy_tags([3, 5], rng, drop_rate=1.0, add_rate=0.0) == []
    tags = synthetic.noisy_tags([3, 5], rng, drop_rate=0.0, add_rate=1.0)
    assert {3, 5} < set(tags) and len(tags) == 3 and 0 <= (set(tags) - {3, 5}).pop() < 10


def test_multi_label_example_is_deterministic_and_cached_apart(tmp_path):
    a = synthetic.make_multi_label_example(0, "train", 7, 40)
    assert a == synthetic.make_multi_label_example(0, "train", 7, 40)
    assert a[2] == "shapes_ml/train/000007" and a != synthetic.make_multi_label_example(1, "train", 7, 40)
    single = synthetic.cache_path(str(tmp_path), seed=0, **SMALL)
    multi = synthetic.cache_path(str(tmp_path), seed=0, multi_label=True, **SMALL)
    assert os.path.basename(multi).startswith("shapes_ml-") and single != multi
    path = synthetic.ensure_dataset(str(tmp_path), seed=0, multi_label=True, num_workers=1, **SMALL)
    assert path == multi and records.read_metadata(path)["multi_label"] is True


def test_cli_multi_label(tmp_path):
    out = tmp_path / "cli_ml"
    synthetic.main([f"--out={out}", "--num_train=12", "--num_val=10", "--image_size=32", "--multi_label"])
    metadata = records.read_metadata(out)
    assert metadata["provenance"]["multi_label"] is True and metadata["splits"]["train"]["multi_label"] is True
