"""Tests for mim_jax.data.ingest: image folders, junk-filled webdataset tars, parquet; resume; bad input."""

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from mim_jax.data import ingest, ingest_sources, records, transforms


def _gradient(width, height, seed, mode="RGB"):
    """A smooth image (JPEG keeps it to within a few levels) in `mode`."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = rng.uniform(40, 200, size=3)
    pixels = np.stack([base[c] + 40 * np.sin(xs / width * 3 + c) + 20 * ys / height for c in range(3)], -1)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).convert(mode)


def _encode(image, fmt="JPEG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _pixels(data):
    return transforms.to_uint8_array(transforms.decode_image(data)).astype(np.float64)


def _read_back(out, split="train"):
    source = records.open_split(out, split)
    return {r["key"]: r for r in (records.decode_record(source[i]) for i in range(len(source)))}


def _files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# ----------------------------------------------------------------------------- image folder


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 class folders: 4 + 3 + 2 RGB JPEGs, one grayscale PNG, one corrupt file, hidden and stray files."""
    root = tmp_path_factory.mktemp("folder") / "images"
    expected = {}
    for label, (name, count) in enumerate([("cat", 4), ("dog", 3), ("eel", 2)]):
        (root / name).mkdir(parents=True)
        for i in range(count):
            data = _encode(_gradient(20 + i, 16, seed=10 * label + i))
            (root / name / f"{name}_{i}.JPEG").write_bytes(data)
            expected[f"{name}/{name}_{i}.JPEG"] = (data, label)
    gray = _gradient(18, 14, seed=99, mode="L")
    (root / "dog" / "gray.png").write_bytes(_encode(gray, "PNG"))
    expected["dog/gray.png"] = (gray, 1)
    (root / "eel" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (root / "eel" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored
    (root / "LICENSE.txt").write_text("not a class")   # top-level file: ignored
    return str(root), expected


def test_image_folder_ingest_counts_labels_and_images(image_folder, tmp_path):
    root, expected = image_folder
    out = tmp_path / "ds"
    metadata = ingest.ingest(f"imagefolder:{root}", str(out), examples_per_shard=4, num_workers=1, progress=False)
    entry = metadata["splits"]["train"]
    assert metadata["classes"] == ["cat", "dog", "eel"]
    assert entry["num_examples"] == 10 and entry["num_skipped"] == 1
    assert entry["skipped"] == {"corrupt": 1} and entry["converted"] == {"L": 1}  # JPEG header, junk body
    assert entry["shards"] == [records.shard_name("train", i, 3) for i in range(3)]  # 11 files / 4 per shard
    assert metadata["provenance"]["ingest"]["train"]["source"] == f"imagefolder:{root}"
    got = _read_back(out)
    assert sorted(got) == sorted(expected)
    for key, (original, label) in expected.items():
        assert got[key]["label"] == label
        if isinstance(original, bytes):
            assert got[key]["image"] == original  # RGB JPEGs are stored byte for byte.
        else:
            reference = np.repeat(np.asarray(original, np.float64)[..., None], 3, axis=-1)
            assert np.abs(_pixels(got[key]["image"]) - reference).mean() < 2.0
    key_hashes, labels = records.read_index(out, "train")
    scanned = records.scan_index(records.open_split(out, "train"))
    np.testing.assert_array_equal(key_hashes, scanned[0])
    np.testing.assert_array_equal(labels, scanned[1])


def test_workers_resume_and_plan_check(image_folder, tmp_path):
    root, _ = image_folder
    one, two = tmp_path / "one", tmp_path / "two"
    ingest.ingest(f"imagefolder:{root}", str(one), examples_per_shard=4, num_workers=1, progress=False)
    ingest.ingest(f"imagefolder:{root}", str(two), examples_per_shard=4, num_workers=2, progress=False)
    shards = records.read_metadata(one)["splits"]["train"]["shards"]
    for name in shards + ["train-index.npz"]:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    # A crash left shard 1 half-written (only its .tmp) and shard 2 finished without its counts.
    os.remove(one / shards[1])
    (one / (shards[1] + ".tmp")).write_bytes(b"partial")
    os.remove(one / ".ingest" / "train" / (shards[2] + ".json"))
    before = os.stat(one / shards[0]).st_mtime_ns
    metadata = ingest.ingest(f"imagefolder:{root}", str(one), examples_per_shard=4, num_workers=1, progress=False)
    assert os.stat(one / shards[0]).st_mtime_ns == before  # Finished shards are not rewritten.
    assert not (one / (shards[1] + ".tmp")).exists()
    for name in shards:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert metadata == records.read_metadata(two)
    with pytest.raises(records.DatasetError, match=r"other arguments \(changed: options.*new --out"):
        ingest.ingest(f"imagefolder:{root}", str(one), examples_per_shard=4, num_workers=1, progress=False,
                      options=ingest.ImageOptions(max_side=8))


def test_second_split_reuses_classes_and_max_side(image_folder, tmp_path):
    root, expected = image_folder
    out = tmp_path / "ds"
    ingest.ingest(f"imagefolder:{root}", str(out), num_workers=1, progress=False)
    metadata = ingest.ingest(f"imagefolder:{root}", str(out), split="val", num_workers=1, progress=False,
                             options=ingest.ImageOptions(max_side=10))
    assert sorted(metadata["splits"]) == ["train", "val"] and metadata["classes"] == ["cat", "dog", "eel"]
    assert metadata["splits"]["val"]["resized"] == 10
    for key, record in _read_back(out, "val").items():
        image = transforms.decode_image(record["image"])
        original = expected[key][0]
        width, height = (original if isinstance(original, Image.Image) else Image.open(io.BytesIO(original))).size
        assert max(image.size) == 10 and image.size == (10, round(10 * height / width)), key


# ----------------------------------------------------------------------------- web shards


def _add(tar, name, data=b"", kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _junk_shard(path):
    """One img2dataset-style tar with every kind of junk; returns {key: reference RGB pixels} of keepers."""
    rgb = _encode(_gradient(24, 18, 0))
    cmyk = _gradient(20, 16, 1, "CMYK")
    gray = _gradient(20, 16, 2, "L")
    palette = _gradient(20, 16, 3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    rgba = _gradient(20, 16, 4, "RGBA")
    alpha = np.asarray(rgba).copy()
    alpha[..., 3] = np.linspace(0, 255, 20, dtype=np.uint8)[None, :]
    rgba = Image.fromarray(alpha, "RGBA")
    la = _gradient(20, 16, 5, "LA")
    keep = {"000": _pixels(rgb), "001": np.asarray(cmyk.convert("RGB"), np.float64),
            "002": np.repeat(np.asarray(gray, np.float64)[..., None], 3, -1),
            "003": np.asarray(palette.convert("RGB"), np.float64)}
    a = alpha[..., 3:].astype(np.float64) / 255
    keep["004"] = alpha[..., :3] * a + 255 * (1 - a)  # Composited onto white.
    clear = palette.copy()
    clear.info["transparency"] = 0  # Palette entry 0 is fully transparent.
    clear_rgba = np.asarray(clear.convert("RGBA"), np.float64)
    clear_alpha = clear_rgba[..., 3:] / 255
    keep["006"] = clear_rgba[..., :3] * clear_alpha + 255 * (1 - clear_alpha)
    la_pixels = np.asarray(la, np.float64)
    keep["005"] = np.repeat((la_pixels[..., 0] * la_pixels[..., 1] / 255 + 255 * (1 - la_pixels[..., 1] / 255))[..., None], 3, -1)
    with tarfile.open(path, "w") as tar:
        _add(tar, "000.jpg", rgb)
        _add(tar, "000.json", json.dumps({"caption": "a", "label": 3}).encode())
        _add(tar, "000.txt", b"a caption")
        _add(tar, "001.jpg", _encode(cmyk))
        _add(tar, "002.png", _encode(gray, "PNG"))
        _add(tar, "003.png", _encode(palette, "PNG"))
        _add(tar, "004.png", _encode(rgba, "PNG"))
        _add(tar, "005.png", _encode(la, "PNG"))
        _add(tar, "006.png", _encode(clear, "PNG", transparency=0))
        jpeg = _encode(_gradient(64, 48, 6))
        _add(tar, "100.jpg", jpeg[: len(jpeg) // 2])                   # truncated -> corrupt
        _add(tar, "101.jpg", os.urandom(300))                          # garbage -> undecodable
        _add(tar, "102.jpg", b"")                                      # zero bytes -> empty
        _add(tar, "103.png", _encode(_gradient(120, 100, 7), "PNG"))   # 12,000 px: bomb warning level
        _add(tar, "104.png", _encode(_gradient(200, 200, 8), "PNG"))   # 40,000 px: bomb error level
        _add(tar, "../evil.jpg", rgb)                                  # climbs out -> unsafe_path
        _add(tar, "/tmp/mim_jax_ingest_evil.jpg", rgb)                 # absolute -> unsafe_path
        _add(tar, "105.json", b"{}")                                   # no image -> no_image
        _add(tar, "106.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd")  # link -> not_a_file
        _add(tar, "subdir", kind=tarfile.DIRTYPE)                      # directories are ignored
    return keep


def _clean_shard(path, count, start):
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            _add(tar, f"{start + i:03d}.jpg", _encode(_gradient(30, 22, 100 + i)))
            _add(tar, f"{start + i:03d}.json", json.dumps({"label": i % 2}).encode())


JUNK_SKIPPED = {"corrupt": 1, "undecodable": 1, "empty": 1, "decompression_bomb": 2, "unsafe_path": 2,
                "no_image": 1, "not_a_file": 1}


def test_webdataset_junk_is_converted_or_skipped_and_counted(tmp_path, monkeypatch):
    shards = tmp_path / "shards"
    shards.mkdir()
    keep = _junk_shard(shards / "00000.tar")
    _clean_shard(shards / "00001.tar", 3, 200)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    inputs_before = _files_under(tmp_path)
    out = tmp_path / "out"
    metadata = ingest.ingest(f"webdataset:{shards}/*.tar", str(out), num_workers=1, progress=False,
                             options=ingest.ImageOptions(max_pixels=10_000))
    entry = metadata["splits"]["train"]
    assert entry["num_examples"] == 7 + 3
    assert entry["skipped"] == JUNK_SKIPPED and entry["num_skipped"] == 9
    assert entry["converted"] == {"CMYK": 1, "L": 1, "LA": 1, "P": 2, "RGBA": 1}
    assert metadata["classes"] == ["unlabeled"]
    # Nothing outside --out: the inputs are unchanged, no file appeared anywhere else.
    after = _files_under(tmp_path)
    assert [f for f in after if not f.startswith("out" + os.sep)] == inputs_before
    assert not os.path.exists("/tmp/mim_jax_ingest_evil.jpg") and not (tmp_path / "evil.jpg").exists()
    got = _read_back(out)
    assert sorted(got) == [f"00000/{k}" for k in sorted(keep)] + ["00001/200", "00001/201", "00001/202"]
    for key, reference in keep.items():
        image = _pixels(got[f"00000/{key}"]["image"])
        assert image.shape == reference.shape
        assert np.abs(image - reference).mean() < 3.5, key  # JPEG q95 error; no composite would be ~10.


def test_webdataset_labels_and_truncated_shard(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _clean_shard(shards / "a.tar", 4, 0)
    _clean_shard(shards / "b.tar", 3, 10)
    with tarfile.open(shards / "b.tar") as tar:
        cut = tar.getmember("012.jpg").offset_data + 100
    data = (shards / "b.tar").read_bytes()
    (shards / "b.tar").write_bytes(data[:cut])  # A download that broke inside the 3rd image.
    metadata = ingest.ingest(f"webdataset:{shards}/*.tar", str(tmp_path / "out"), num_workers=1, progress=False,
                             label_key="label")
    entry = metadata["splits"]["train"]
    assert entry["num_examples"] == 4 + 2 and entry["skipped"] == {"truncated_shard": 1}
    assert metadata["classes"] == ["0", "1"]
    got = _read_back(tmp_path / "out")
    assert {k: r["label"] for k, r in got.items()} == {
        "a/000": 0, "a/001": 1, "a/002": 0, "a/003": 1, "b/010": 0, "b/011": 1}


def test_exif_orientation_is_applied():
    image = _gradient(24, 16, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # "Rotate 90 CW to display".
    data = _encode(image, exif=exif.tobytes(), quality=95)
    stored, changes = ingest.prepare_image(data, ingest.ImageOptions())
    assert changes["rotated"] and stored != data
    upright = _pixels(stored)
    reference = np.rot90(np.asarray(image, np.float64), k=-1)  # 90 degrees clockwise.
    assert upright.shape == (24, 16, 3) and np.abs(upright - reference).mean() < 2.5
    plain = _encode(image)
    assert ingest.prepare_image(plain, ingest.ImageOptions()) == (plain, {
        "converted_from": "", "resized": False, "rotated": False})


def test_brace_globs_expand_like_webdataset():
    assert ingest_sources._expand_braces("/d/{008..011}.tar") == [f"/d/{i:03d}.tar" for i in range(8, 12)]
    assert ingest_sources.is_unsafe_member_name("a/../../b.jpg") and ingest_sources.is_unsafe_member_name("/x.jpg")
    assert ingest_sources.is_unsafe_member_name("C:/x.jpg") and not ingest_sources.is_unsafe_member_name("a/b..c.jpg")


def test_parquet_ingest(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [_encode(_gradient(16, 12, i)) for i in range(4)]
    table = pa.table({"key": ["k0", "k1", "k2", "k3", "k4"], "jpg": images + [None], "label": [2, 0, 1, 2, 0],
                      "caption": list("abcde")})
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=2)
    metadata = ingest.ingest(f"parquet:{tmp_path}/*.parquet", str(tmp_path / "out"), num_workers=1,
                             progress=False, label_key="label")
    assert metadata["splits"]["train"]["num_examples"] == 4
    assert metadata["splits"]["train"]["skipped"] == {"no_image": 1}
    got = _read_back(tmp_path / "out")
    assert {k: (r["image"], r["label"]) for k, r in got.items()} == {
        f"part-0/k{i}": (images[i], [2, 0, 1, 2][i]) for i in range(4)}


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("make, source, message", [
    (lambda d: None, "imagefolder:{d}/missing", r"missing' is not a directory; pass the folder"),
    (lambda d: os.makedirs(f"{d}/empty"), "imagefolder:{d}/empty", r"empty' has no class folders"),
    (lambda d: os.makedirs(f"{d}/noimg/cat"), "imagefolder:{d}/noimg", r"noimg holds no images in class folders"),
    (lambda d: None, "webdataset:{d}/*.tar", r"\*\.tar matches no files; check the path"),
    (lambda d: open(f"{d}/bad.tar", "wb").write(os.urandom(2000)), "webdataset:{d}/bad.tar",
     r"Cannot read tar shard .*bad.tar.*re-download it and re-run the same command"),
    (lambda d: open(f"{d}/bad.parquet", "wb").write(b"PAR1 nope"), "parquet:{d}/bad.parquet",
     r"Cannot read parquet file .*bad.parquet"),
    (lambda d: None, "s3:{d}", r"unknown kind 's3'"),
    (lambda d: os.makedirs(f"{d}/out"), "imagefolder:{d}", r"--out=.*/out' lies inside imagefolder:"),
])
def test_bad_input_errors_name_the_path(tmp_path, make, source, message):
    make(tmp_path)
    with pytest.raises(records.DatasetError, match=message):
        ingest.ingest(source.format(d=tmp_path), str(tmp_path / "out"), num_workers=1, progress=False)


def test_unreadable_shard_stops_then_resumes_with_skip_unreadable(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _clean_shard(shards / "00000.tar", 3, 0)
    (shards / "00001.tar").write_bytes(os.urandom(3000))
    _clean_shard(shards / "00002.tar", 2, 10)
    source, out = f"webdataset:{shards}/*.tar", str(tmp_path / "out")
    with pytest.raises(records.DatasetError, match=r"00001.tar.*re-download it and re-run.*--skip_unreadable"):
        ingest.ingest(source, out, num_workers=1, progress=False)
    assert not os.path.exists(os.path.join(out, records.METADATA_FILE))
    metadata = ingest.ingest(source, out, num_workers=1, progress=False, skip_unreadable=True)
    entry = metadata["splits"]["train"]
    assert entry["num_examples"] == 5 and entry["skipped"] == {"unreadable_shard": 1}
    assert sorted(_read_back(out)) == ["00000/000", "00000/001", "00000/002", "00002/010", "00002/011"]


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ingest.main([f"--source=webdataset:{tmp_path}/none-*.tar", f"--out={tmp_path}/out"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: webdataset:") and "none-*.tar matches no files" in err


# ----------------------------------------------------------------------------- tags and a vocabulary

VOCAB = "dog\tpuppy,doggo\ngolden_retriever\tGolden Retriever\n\ncat\tkitty\nbeach\n"  # ids 0..3 (blank skipped)


def _vocab_file(tmp_path, text=VOCAB):
    path = tmp_path / "vocab.txt"
    path.write_text(text)
    return str(path)


def _tagged_shard(path, samples):
    """A webdataset tar with one jpg per sample and its json / txt members as given."""
    with tarfile.open(path, "w") as tar:
        for i, (meta, text) in enumerate(samples):
            _add(tar, f"{i:03d}.jpg", _encode(_gradient(20, 16, 300 + i)))
            if meta is not None:
                _add(tar, f"{i:03d}.json", json.dumps(meta).encode())
            if text is not None:
                _add(tar, f"{i:03d}.txt", text.encode())


def _reference_mapping(tags, lookup):
    """By hand: tags -> (distinct known ids in first-seen order, mapped, unknown)."""
    ids, mapped, unknown = [], 0, 0
    for tag in tags:
        key = tag if isinstance(tag, int) else lookup.get(tag.lstrip("#").lower().replace(" ", "_").replace("-", "_"))
        if key is None:
            unknown += 1
            continue
        mapped += 1
        if key not in ids:
            ids.append(key)
    return ids, mapped, unknown


LOOKUP = {"dog": 0, "puppy": 0, "doggo": 0, "golden_retriever": 1, "cat": 2, "kitty": 2, "beach": 3}
JSON_TAGS = [["dog", "Beach", "sunset"], ["PUPPY", "doggo"], ["selfie"], [], ["Golden-Retriever", 2], None,
             ["#kitty", "cat", "tbt", "love"]]


@pytest.mark.parametrize("skip_tagless", [False, True])
def test_webdataset_json_tags_with_vocab_give_exact_counts(tmp_path, skip_tagless):
    shards = tmp_path / "shards"
    shards.mkdir()
    _tagged_shard(shards / "a.tar", [({"tags": t} if t is not None else {"caption": "x"}, None) for t in JSON_TAGS])
    metadata = ingest.ingest(f"webdataset:{shards}/*.tar", str(tmp_path / "out"), num_workers=1, progress=False,
                             tags_key="tags", label_vocab=_vocab_file(tmp_path), skip_tagless=skip_tagless)
    expected = [_reference_mapping(t or [], LOOKUP) for t in JSON_TAGS]
    tagless = sum(not ids for ids, _, _ in expected)
    entry = metadata["splits"]["train"]
    assert metadata["classes"] == ["dog", "golden_retriever", "cat", "beach"]
    assert (metadata["multi_label"], entry["multi_label"]) == (True, True)
    assert entry["tags"] == {"mapped": sum(m for _, m, _ in expected), "unknown": sum(u for _, _, u in expected),
                             "tagless": tagless, "skip_tagless": skip_tagless}
    assert (entry["tags"]["mapped"], entry["tags"]["unknown"], tagless) == (8, 4, 3)  # Counted by hand too.
    kept = [(f"a/{i:03d}", ids) for i, (ids, _, _) in enumerate(expected) if ids or not skip_tagless]
    assert entry["num_examples"] == len(kept) and entry.get("skipped", {}) == ({"tagless": 3} if skip_tagless else {})
    got = _read_back(tmp_path / "out")
    assert {k: r["labels"] for k, r in got.items()} == dict(kept)
    assert {k: r["label"] for k, r in got.items()} == {k: (ids[0] if ids else -1) for k, ids in kept}
    frequencies = [sum(c in ids for _, ids in kept) for c in range(4)]
    assert entry["class_frequencies"] == frequencies == metadata["class_frequencies"]
    offsets, values = records.read_label_sets(tmp_path / "out", "train")  # From the index file.
    source = records.open_split(tmp_path / "out", "train")
    assert [values[offsets[i]:offsets[i + 1]].tolist() for i in range(len(source))] == [
        records.decode_record(source[i])["labels"] for i in range(len(source))]


def test_webdataset_txt_hashtags_and_parquet_columns(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    captions = ["sunny day #beach #Dog #nofilter", "no tags here", "#kitty#cat and #golden-retriever", None]
    _tagged_shard(shards / "t.tar", [(None, c) for c in captions])
    out = tmp_path / "txt"
    metadata = ingest.ingest(f"webdataset:{shards}/*.tar", str(out), num_workers=1, progress=False,
                             tags_key="txt", label_vocab=_vocab_file(tmp_path))
    assert metadata["splits"]["train"]["tags"] == {"mapped": 5, "unknown": 1, "tagless": 2, "skip_tagless": False}
    assert {k: r["labels"] for k, r in _read_back(out).items()} == {
        "t/000": [3, 0], "t/001": [], "t/002": [2, 1], "t/003": []}

    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [_encode(_gradient(16, 12, 400 + i)) for i in range(4)]
    table = pa.table({"key": ["p0", "p1", "p2", "p3"], "jpg": images,
                      "tags": [["cat", "mystery"], [], ["beach", "dog", "beach"], ["x", "y"]],
                      "caption": ["#doggo on the #beach", "#kitty", "", "#unknown"]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    by_list = ingest.ingest(f"parquet:{tmp_path}/*.parquet", str(tmp_path / "pq_list"), num_workers=1,
                            progress=False, tags_key="tags", label_vocab=_vocab_file(tmp_path), skip_tagless=True)
    entry = by_list["splits"]["train"]
    assert entry["tags"] == {"mapped": 4, "unknown": 3, "tagless": 2, "skip_tagless": True}
    assert entry["skipped"] == {"tagless": 2} and entry["class_frequencies"] == [1, 0, 1, 1]
    assert {k: r["labels"] for k, r in _read_back(tmp_path / "pq_list").items()} == {
        "part-0/p0": [2], "part-0/p2": [3, 0]}
    by_caption = ingest.ingest(f"parquet:{tmp_path}/*.parquet", str(tmp_path / "pq_caption"), num_workers=1,
                               progress=False, tags_key="caption", label_vocab=_vocab_file(tmp_path))
    assert by_caption["splits"]["train"]["tags"] == {"mapped": 3, "unknown": 1, "tagless": 2, "skip_tagless": False}
    assert {k: r["labels"] for k, r in _read_back(tmp_path / "pq_caption").items()} == {
        "part-0/p0": [0, 3], "part-0/p1": [2], "part-0/p2": [], "part-0/p3": []}


def test_single_label_ingests_are_one_element_sets(image_folder, tmp_path):
    root, expected = image_folder
    metadata = ingest.ingest(f"imagefolder:{root}", str(tmp_path / "ds"), num_workers=1, progress=False)
    entry = metadata["splits"]["train"]
    assert entry["multi_label"] is False and "tags" not in entry
    assert entry["class_frequencies"] == [4, 4, 2]  # cat 4, dog 3 + gray, eel 2 (+ 1 corrupt skipped).
    got = _read_back(tmp_path / "ds")
    assert all(r["labels"] == [r["label"]] for r in got.values())


@pytest.mark.parametrize("text, message", [
    ("", r"--label_vocab=.*vocab.txt lists no classes; write one class per line"),
    ("\n\n  \n", r"lists no classes"),
    ("dog\ncat\nDog\n", r"vocab.txt line 3: 'Dog' duplicates 'dog' on line 1; every class name and alias must be unique"),
    ("dog\tpuppy\ncat\tpuppy\n", r"line 2: 'puppy' duplicates 'dog' on line 1"),
])
def test_bad_vocabularies_name_the_file_and_line(tmp_path, text, message):
    shards = tmp_path / "shards"
    shards.mkdir()
    _tagged_shard(shards / "a.tar", [({"tags": ["dog"]}, None)])
    with pytest.raises(records.DatasetError, match=message):
        ingest.ingest(f"webdataset:{shards}/*.tar", str(tmp_path / "out"), num_workers=1, progress=False,
                      tags_key="tags", label_vocab=_vocab_file(tmp_path, text))


def test_class_id_beyond_the_vocabulary_is_one_line(tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    _tagged_shard(shards / "a.tar", [({"tags": ["dog"]}, None), ({"tags": [1, 7]}, None)])
    with pytest.raises(SystemExit) as exit_info:
        ingest.main([f"--source=webdataset:{shards}/*.tar", f"--out={tmp_path}/out", "--num_workers=1",
                     "--tags_key=tags", f"--label_vocab={_vocab_file(tmp_path)}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # After the progress bar: one line.
    assert err.startswith("error: webdataset sample 'a/001': class id 7 is beyond the 4 classes of "
                          f"--label_vocab={tmp_path}/vocab.txt")


@pytest.mark.parametrize("kwargs, message", [
    ({"tags_key": "tags"}, r"--tags_key='tags' and --label_vocab='' go together"),
    ({"tags_key": "tags", "label_vocab": "V", "label_key": "label"}, r"cannot be combined with --label_key"),
])
def test_tag_flags_that_do_not_fit_together(tmp_path, kwargs, message):
    shards = tmp_path / "shards"
    shards.mkdir()
    _tagged_shard(shards / "a.tar", [({"tags": ["dog"]}, None)])
    if "label_vocab" in kwargs:
        kwargs = {**kwargs, "label_vocab": _vocab_file(tmp_path)}
    with pytest.raises(records.DatasetError, match=message):
        ingest.ingest(f"webdataset:{shards}/*.tar", str(tmp_path / "out"), num_workers=1, progress=False, **kwargs)
    with pytest.raises(records.DatasetError, match=r"read per-sample tags of webdataset or parquet inputs, not "
                                                   r"imagefolder"):
        ingest.ingest(f"imagefolder:{shards}", str(tmp_path / "out2"), num_workers=1, progress=False,
                      tags_key="tags", label_vocab=_vocab_file(tmp_path))


@pytest.mark.slow
def test_tagged_ingest_with_workers_writes_the_same_shards(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _tagged_shard(shards / "a.tar", [({"tags": t} if t is not None else {}, None) for t in JSON_TAGS])
    _tagged_shard(shards / "b.tar", [({"tags": ["cat", "x"]}, None), ({"tags": ["kitty"]}, None)])
    vocab = _vocab_file(tmp_path)
    one = ingest.ingest(f"webdataset:{shards}/*.tar", str(tmp_path / "one"), num_workers=1, progress=False,
                        tags_key="tags", label_vocab=vocab)
    two = ingest.ingest(f"webdataset:{shards}/*.tar", str(tmp_path / "two"), num_workers=2, progress=False,
                        tags_key="tags", label_vocab=vocab)
    assert one == two and one["splits"]["train"]["tags"] == {"mapped": 10, "unknown": 5, "tagless": 3,
                                                             "skip_tagless": False}
    for name in one["splits"]["train"]["shards"] + ["train-index.npz"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    (tmp_path / "vocab.txt").write_text(VOCAB + "sunset\n")  # Another vocabulary: resuming is refused.
    with pytest.raises(records.DatasetError, match=r"other arguments \(changed: label_vocab\)"):
        ingest.ingest(f"webdataset:{shards}/*.tar", str(tmp_path / "one"), num_workers=1, progress=False,
                      tags_key="tags", label_vocab=vocab)
