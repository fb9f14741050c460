"""Tests for mim_jax.data.pipeline: determinism across restarts, processes and workers; coverage."""

import itertools

import numpy as np
import pytest

from mim_jax.data import ingest, pipeline, records, subsets, synthetic, transforms

NUM_TRAIN, NUM_VAL, SIZE = 50, 23, 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "shapes"
    synthetic.generate(str(out), num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=SIZE, seed=0,
                       num_shards=3)
    return str(out)


def _take(iterator, n):
    batches = [{k: np.array(v) for k, v in b.items()} for b in itertools.islice(iterator, n)]
    if hasattr(iterator, "close"):
        iterator.close()
    return batches


def _train(dataset, n, **kwargs):
    args = dict(global_batch_size=10, image_size=24, seed=0)
    args.update(kwargs)
    return _take(pipeline.train_batches(dataset, "train", **args), n)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_batch_shapes_and_dtypes(dataset):
    (batch,) = _train(dataset, 1)
    assert batch["image"].shape == (10, 24, 24, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (10,) and batch["label"].dtype == np.int32


def test_same_seed_and_step_give_the_same_batch(dataset):
    first = _train(dataset, 4)
    _assert_same(_train(dataset, 4), first)
    _assert_same(_train(dataset, 2, start_step=2), first[2:])  # Resume = start at the step.


def test_steps_and_seeds_differ(dataset):
    batches = _train(dataset, 6)
    for a, b in itertools.combinations(batches, 2):
        assert not np.array_equal(a["image"], b["image"])
    other_seed = _train(dataset, 1, seed=1)[0]
    assert not np.array_equal(other_seed["image"], batches[0]["image"])


def test_processes_split_each_global_batch(dataset):
    single = _train(dataset, 3, global_batch_size=12)
    parts = [_train(dataset, 3, global_batch_size=12, process_index=p, process_count=3)
             for p in range(3)]
    assert parts[0][0]["image"].shape == (4, 24, 24, 3)
    merged = [{k: np.concatenate([part[s][k] for part in parts]) for k in single[0]}
              for s in range(3)]
    _assert_same(merged, single)
    resumed = _train(dataset, 1, global_batch_size=12, process_index=1, process_count=3, start_step=2)
    _assert_same(resumed, [parts[1][2]])


@pytest.mark.slow
def test_worker_processes_do_not_change_batches(dataset):
    reference = _train(dataset, 3, start_step=1)
    _assert_same(_train(dataset, 3, start_step=1, num_workers=2), reference)


def _record_index(dataset):
    """Maps image bytes (as stored, and left-right flipped) to (record index, label)."""
    source = records.open_split(dataset, "train")
    index = {}
    for i in range(len(source)):
        record = records.decode_record(source[i])
        pixels = transforms.to_uint8_array(transforms.decode_image(record["image"]))
        index[pixels.tobytes()] = index[np.fliplr(pixels).tobytes()] = (i, record["label"])
    return index


def test_each_epoch_visits_every_example_once(dataset):
    # With crop scale = ratio = 1 the crop is the whole (square) image, so each output image is a
    # stored image, maybe flipped, and identifies its record.
    index = _record_index(dataset)
    batches = _train(dataset, 15, image_size=SIZE, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    seen = []
    for batch in batches:
        for image, label in zip(batch["image"], batch["label"]):
            record, record_label = index[np.ascontiguousarray(image).tobytes()]
            seen.append(record)
            assert label == record_label
    epochs = [seen[e * NUM_TRAIN:(e + 1) * NUM_TRAIN] for e in range(3)]  # 15 steps x 10 = 3 epochs.
    for order in epochs:
        assert sorted(order) == list(range(NUM_TRAIN))
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    assert epochs[0] != list(range(NUM_TRAIN))


def test_batch_size_errors_name_the_config_field(dataset):
    with pytest.raises(ValueError, match="data.global_batch_size=10 .* divisible .* 4"):
        pipeline.train_batches(dataset, "train", global_batch_size=10, image_size=24, seed=0,
                               process_count=4)
    with pytest.raises(ValueError, match="data.global_batch_size=0 must be positive"):
        pipeline.train_batches(dataset, "train", global_batch_size=0, image_size=24, seed=0)


def test_unknown_split_error(dataset):
    with pytest.raises(records.DatasetError, match=r"available splits: \['train', 'val'\]"):
        pipeline.train_batches(dataset, "test", global_batch_size=10, image_size=24, seed=0)


def _expected_eval(dataset, n, size):
    source = records.open_split(dataset, "val")
    decoded = [records.decode_record(source[i]) for i in range(n)]
    images = [transforms.decode_center_crop(transforms.open_image(r["image"]), r["image"], size)
              for r in decoded]
    # The OpenCV path stays within ~1 uint8 level of the PIL reference (bicubic kernels differ slightly).
    reference = [transforms.to_uint8_array(transforms.center_crop_eval(transforms.decode_image(r["image"]), size))
                 for r in decoded]
    assert np.abs(np.stack(images).astype(float) - np.stack(reference)).mean() < 1.5
    return np.stack(images), np.array([r["label"] for r in decoded], np.int32)


def _eval(dataset, **kwargs):
    return _take(pipeline.eval_batches(dataset, "val", image_size=24, **kwargs), 100)


def test_eval_covers_every_example_once_with_padding(dataset):
    batches = _eval(dataset, batch_size=8)
    assert len(batches) == 3  # ceil(23 / 8)
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [True] * 23 + [False])
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    expected_images, expected_labels = _expected_eval(dataset, NUM_VAL, 24)
    np.testing.assert_array_equal(images[:23], expected_images)
    np.testing.assert_array_equal(labels[:23], expected_labels)
    assert not images[23:].any() and not labels[23:].any()
    assert mask.dtype == np.bool_ and labels.dtype == np.int32 and images.dtype == np.uint8


def test_eval_processes_yield_equal_counts_and_split_each_batch(dataset):
    single = _eval(dataset, batch_size=8)
    parts = [_eval(dataset, batch_size=8, process_index=p, process_count=2) for p in range(2)]
    assert [len(p) for p in parts] == [3, 3]
    merged = [{k: np.concatenate([p[s][k] for p in parts]) for k in single[0]} for s in range(3)]
    _assert_same(merged, single)
    # The last global batch holds 7 real examples: 4 on process 0, 3 plus the padding on process 1.
    np.testing.assert_array_equal(parts[0][2]["mask"], [True] * 4)
    np.testing.assert_array_equal(parts[1][2]["mask"], [True] * 3 + [False])


@pytest.mark.slow
def test_eval_max_examples_and_workers(dataset):
    batches = _eval(dataset, batch_size=4, max_examples=10, num_workers=2)
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [True] * 10 + [False] * 2)
    expected_images, _ = _expected_eval(dataset, 10, 24)
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches])[:10], expected_images)


def test_metadata_helpers(dataset):
    assert pipeline.num_examples(dataset, "train") == NUM_TRAIN
    assert pipeline.num_examples(dataset, "val") == NUM_VAL
    assert pipeline.num_classes(dataset) == 10


# ----------------------------------------------------------------------------- subsets


def test_subset_epochs_visit_exactly_the_subset(dataset):
    spec = subsets.SubsetSpec(kind="random", count=20, seed=5)
    key_hashes, _ = records.scan_index(records.open_split(dataset, "train"))  # No index file: scanned.
    expected = sorted(subsets.random_subset(key_hashes, 20, seed=5))
    index = _record_index(dataset)
    batches = _train(dataset, 4, image_size=SIZE, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), subset=spec)
    seen = [index[np.ascontiguousarray(image).tobytes()][0] for b in batches for image in b["image"]]
    assert sorted(seen[:20]) == expected and sorted(seen[20:]) == expected  # 4 x 10 = 2 epochs of 20.
    assert seen[:20] != seen[20:]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, dataset):
    """The synthetic train images as an image folder (class folders), ingested with an index file."""
    root = tmp_path_factory.mktemp("folder")
    source = records.open_split(dataset, "train")
    names = synthetic.CLASSES
    for i in range(len(source)):
        record = records.decode_record(source[i])
        folder = root / names[record["label"]]
        folder.mkdir(exist_ok=True)
        (folder / f"{i:03d}.jpg").write_bytes(record["image"])
    out = tmp_path_factory.mktemp("ingested") / "ds"
    ingest.ingest(f"imagefolder:{root}", str(out), examples_per_shard=16, num_workers=1, progress=False)
    return str(out)


@pytest.mark.slow
def test_subset_batches_do_not_depend_on_processes_or_workers(ingested):
    spec = subsets.SubsetSpec(kind="balanced", fraction=0.5, seed=1)
    assert "index" in records.split_info(ingested, "train")
    single = _train(ingested, 3, global_batch_size=12, subset=spec)
    parts = [_train(ingested, 3, global_batch_size=12, process_index=p, process_count=2, subset=spec)
             for p in range(2)]
    merged = [{k: np.concatenate([part[s][k] for part in parts]) for k in single[0]} for s in range(3)]
    _assert_same(merged, single)
    _assert_same(_train(ingested, 3, global_batch_size=12, subset=spec, num_workers=2), single)
    # Balanced halves of the 10 classes of 5: 3 images each (round(2.5) = 3), so labels 0-9 in 30 records.
    labels = np.concatenate([b["label"] for b in _train(ingested, 5, global_batch_size=6, subset=spec)])
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [3] * 10)


# ----------------------------------------------------------------------------- label sets


@pytest.fixture(scope="module")
def multi_label_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline_ml") / "shapes_ml"
    synthetic.generate(str(out), num_train=NUM_TRAIN, num_val=NUM_VAL, image_size=SIZE, seed=0, num_shards=3,
                       multi_label=True, num_workers=1)
    return str(out)


def _reference_padded(sets, max_labels):
    """numpy reference: each set's first max_labels ids in record order, then -1."""
    out = -np.ones((len(sets), max_labels), np.int64)
    for row, labels in enumerate(sets):
        kept = labels[:max_labels]
        out[row, :len(kept)] = kept
    return out


def test_padded_label_sets_equal_a_numpy_reference(multi_label_dataset):
    # Crop the whole image so each output identifies its record (as in the epoch test above).
    index = _record_index(multi_label_dataset)
    source = records.open_split(multi_label_dataset, "train")
    sets = [records.decode_record(source[i])["labels"] for i in range(len(source))]
    assert max(map(len, sets)) > 2  # Some sets are cut at max_labels=2.
    for max_labels in (2, 5):
        batches = _train(multi_label_dataset, 6, image_size=SIZE, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                         max_labels=max_labels)
        for batch in batches:
            assert batch["labels"].shape == (10, max_labels) and batch["labels"].dtype == np.int32
            rows = [index[np.ascontiguousarray(image).tobytes()][0] for image in batch["image"]]
            np.testing.assert_array_equal(batch["labels"], _reference_padded([sets[r] for r in rows], max_labels))
            np.testing.assert_array_equal(batch["label"], [(sets[r] or [-1])[0] for r in rows])
    # The label sets do not change the images: the same (seed, step) gives the same pixels.
    plain = _train(multi_label_dataset, 2)
    with_sets = _train(multi_label_dataset, 2, max_labels=3)
    for a, b in zip(plain, with_sets):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert "labels" not in a


def test_padded_label_sets_resume_and_split_over_processes(multi_label_dataset):
    single = _train(multi_label_dataset, 3, global_batch_size=12, max_labels=4)
    parts = [_train(multi_label_dataset, 3, global_batch_size=12, process_index=p, process_count=2, max_labels=4)
             for p in range(2)]
    merged = [{k: np.concatenate([part[s][k] for part in parts]) for k in single[0]} for s in range(3)]
    _assert_same(merged, single)
    _assert_same(_train(multi_label_dataset, 1, global_batch_size=12, start_step=2, max_labels=4), single[2:])


def test_eval_batches_carry_padded_label_sets(multi_label_dataset, dataset):
    # The val split is single-label: one-element sets; padding examples are all -1.
    batches = _eval(multi_label_dataset, batch_size=8, max_labels=3)
    labels = np.concatenate([b["labels"] for b in batches])
    _, expected = _expected_eval(multi_label_dataset, NUM_VAL, 24)
    np.testing.assert_array_equal(labels[:NUM_VAL], _reference_padded([[int(y)] for y in expected], 3))
    np.testing.assert_array_equal(labels[NUM_VAL:], -np.ones((1, 3)))
    train_sets = _take(pipeline.eval_batches(multi_label_dataset, "train", batch_size=10, image_size=24,
                                             max_labels=4), 100)
    source = records.open_split(multi_label_dataset, "train")
    sets = [records.decode_record(source[i])["labels"] for i in range(NUM_TRAIN)]
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in train_sets]), _reference_padded(sets, 4))


def test_single_label_datasets_give_one_element_sets(dataset):
    (batch,) = _train(dataset, 1, max_labels=3)
    np.testing.assert_array_equal(batch["labels"][:, 0], batch["label"])
    assert (batch["labels"][:, 1:] == -1).all()


def test_max_labels_errors_and_batch_shapes(dataset):
    with pytest.raises(ValueError, match=r"data.max_labels=-1 must be an integer >= 0"):
        pipeline.train_batches(dataset, "train", global_batch_size=10, image_size=24, seed=0, max_labels=-1)
    assert pipeline.batch_shapes(8, 24, max_labels=5) == {
        "image": ((8, 24, 24, 3), np.uint8), "label": ((8,), np.int32), "labels": ((8, 5), np.int32)}
    (batch,) = _train(dataset, 1, max_labels=5)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == pipeline.batch_shapes(10, 24, max_labels=5)


def test_truncation_is_counted(multi_label_dataset, caplog):
    from mim_jax.data import sources

    source = records.open_split(multi_label_dataset, "train")
    lengths = [len(records.decode_record(source[i])["labels"]) for i in range(NUM_TRAIN)]
    assert sources.num_truncated(multi_label_dataset, "train", 2) == sum(n > 2 for n in lengths) > 0
    assert sources.num_truncated(multi_label_dataset, "train", 10) == 0
    with caplog.at_level("WARNING"):
        _train(multi_label_dataset, 1, max_labels=2)
    cut = sum(n > 2 for n in lengths)
    assert f"{cut} of {NUM_TRAIN} records of split 'train' have more than data.max_labels=2 labels" in caplog.text


@pytest.mark.slow
def test_padded_label_sets_do_not_depend_on_workers(multi_label_dataset):
    reference = _train(multi_label_dataset, 3, start_step=1, max_labels=3)
    _assert_same(_train(multi_label_dataset, 3, start_step=1, max_labels=3, num_workers=2), reference)


def _pretrain(dataset, start_step, n, **data):
    """n batches of the pretraining loop's input (train.loop.pretrain_batches) from start_step on."""
    from conftest import tiny_pretrain_config
    from mim_jax.train import loop
    c = tiny_pretrain_config(dataset)
    c.data.update({"global_batch_size": 10, **data})
    return _take(loop.pretrain_batches(c, dataset, start_step), n)


def test_pretraining_randaugment_changes_images_but_not_order_and_resumes(dataset):
    """data.auto_augment reaches the pretraining batches: same labels (same shuffle), other pixels; the batch of a
    step is the same when the loop resumes there."""
    plain = _pretrain(dataset, 0, 3)
    augmented = _pretrain(dataset, 0, 3, auto_augment="rand-m9-n2")
    for a, b in zip(plain, augmented):
        np.testing.assert_array_equal(a["label"], b["label"])
        assert a["image"].shape == b["image"].shape and np.mean(a["image"] != b["image"]) > 0.1
    _assert_same(_pretrain(dataset, 2, 1, auto_augment="rand-m9-n2"), augmented[2:])


@pytest.mark.slow
def test_pretraining_randaugment_does_not_depend_on_workers(dataset):
    reference = _pretrain(dataset, 1, 2, auto_augment="rand-m9-n2")
    _assert_same(_pretrain(dataset, 1, 2, auto_augment="rand-m9-n2", num_workers=2), reference)
