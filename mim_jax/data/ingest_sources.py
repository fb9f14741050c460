"""Inputs that `mim_jax.data.ingest` reads: image folders, webdataset tars, parquet files, TFDS datasets.

Each source plans its input as a list of tasks (one output shard each: a chunk of files, one tar, one
parquet file, a range of TFDS indices) and streams the `Item`s of one task. Tar members are only ever
read as bytes (never extracted); members with absolute or '..' names are reported as skipped.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import posixpath
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from mim_jax.data import records
from mim_jax.data.label_vocab import hashtags, tags_from_value

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
PARQUET_IMAGE_COLUMNS = ("jpg", "image", "png", "webp", "img")
UNLABELED = ["unlabeled"]
_UNREADABLE_FIX = ("re-download it and re-run the same command (finished shards are kept), or add "
                   "--skip_unreadable to count it as skipped and go on.")


class UnreadableInput(records.DatasetError):
    """A whole input file (tar, parquet) cannot be opened."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One input example: its key, label and encoded image, or the reason it is skipped.

    `tags`: the raw tags (strings or class ids) when the source reads tags (--tags_key), else None.
    """

    key: str
    label: int = 0
    image: bytes | None = None
    skip_reason: str = ""
    tags: tuple[str | int, ...] | None = None


def hash_strings(strings: Iterable[str]) -> str:
    """A short fingerprint of a sequence of strings (for plan checks), computed incrementally."""
    digest = hashlib.sha256()
    for string in strings:
        digest.update(string.encode() + b"\n")
    return digest.hexdigest()[:16]


def _read_class_index(path: str) -> list[str]:
    """Class names from a file with one name per line (label = line number)."""
    try:
        with open(path) as f:
            names = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise records.DatasetError(f"--class_index={path!r} cannot be read ({e.strerror}); pass a text file "
                                   f"with one class name per line.") from e
    if not names or len(set(names)) != len(names):
        raise records.DatasetError(f"--class_index={path!r} must list distinct class names, one per line.")
    return names


@dataclasses.dataclass(frozen=True)
class ImageFolderSource:
    """`root/<class>/<file>` images; a task is a chunk of (relative path, label) pairs."""

    root: str
    classes: tuple[str, ...]
    examples_per_shard: int

    def describe(self) -> dict[str, Any]:
        """What identifies this input, for the plan and provenance."""
        return {"kind": "imagefolder", "root": self.root, "classes": len(self.classes)}

    def plan(self) -> list[tuple[tuple[str, int], ...]]:
        """Chunks of (class/file, label), in sorted order."""
        files = []
        label_of = {name: i for i, name in enumerate(self.classes)}
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            if entry.name not in label_of:
                raise records.DatasetError(
                    f"Folder {entry.path!r} is not a class of the dataset ({len(self.classes)} classes, e.g. "
                    f"{list(self.classes[:3])}); fix --class_index or ingest it into another --out.")
            names = sorted(n for n in os.listdir(entry.path) if not n.startswith("."))
            files.extend((f"{entry.name}/{n}", label_of[entry.name]) for n in names)
        if not files:
            raise records.DatasetError(f"imagefolder:{self.root} holds no images in class folders; expected "
                                       f"{self.root}/<class>/<image file>.")
        n = self.examples_per_shard
        return [tuple(files[i:i + n]) for i in range(0, len(files), n)]

    def read(self, task: tuple[tuple[str, int], ...]) -> Iterator[Item]:
        """Yields the files of one chunk."""
        for relative, label in task:
            path = os.path.join(self.root, relative)
            if not os.path.isfile(path):
                yield Item(relative, label, skip_reason="not_a_file")
                continue
            try:
                with open(path, "rb") as f:
                    yield Item(relative, label, f.read())
            except OSError:
                yield Item(relative, label, skip_reason="unreadable")


def _expand_glob(kind: str, pattern: str) -> list[str]:
    """Sorted files matching `pattern` (shell glob or webdataset-style {000..099} braces)."""
    patterns = _expand_braces(pattern)
    files = sorted({p for pat in patterns for p in glob.glob(os.path.expanduser(pat)) if os.path.isfile(p)})
    if not files:
        raise records.DatasetError(f"{kind}:{pattern} matches no files; check the path and quote the glob "
                                   f"so the shell does not expand it.")
    return files


def _expand_braces(pattern: str) -> list[str]:
    """Expands one numeric brace range like {00000..00123} (webdataset / img2dataset style)."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    width = len(lo)
    return [p for i in range(int(lo), int(hi) + 1)
            for p in _expand_braces(pattern[:match.start()] + str(i).zfill(width) + pattern[match.end():])]


def is_unsafe_member_name(name: str) -> bool:
    """Whether a tar member name is absolute or climbs out with '..' (it is never extracted, only counted)."""
    normalized = name.replace("\\", "/")
    return (normalized.startswith("/") or bool(re.match(r"^[A-Za-z]:", normalized))
            or ".." in normalized.split("/"))


def _split_member_name(name: str) -> tuple[str, str]:
    """(key, extension) the webdataset way: the extension starts at the first dot of the base name."""
    directory, base = posixpath.split(name)
    stem, _, extension = base.partition(".")
    return posixpath.join(directory, stem), extension.lower()


def _label_from(sample: dict[str, bytes], label_key: str) -> int | None:
    """The integer label of a webdataset sample from its .cls member or a json field; None if invalid."""
    try:
        if label_key == "cls":
            value = sample["cls"].decode().strip()
        else:
            value = json.loads(sample["json"]).get(label_key)
        label = int(value)
    except (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError):
        return None
    return label if label >= 0 and str(label) == str(value).strip() else None


def _tags_from(sample: dict[str, bytes], tags_key: str) -> tuple[str | int, ...]:
    """Raw tags of a webdataset sample: #hashtags of its .txt member, or a json field (list or caption).

    A missing member or field, or unreadable json / text, gives no tags (the sample counts as tagless).
    """
    try:
        if tags_key == "txt":
            return tuple(hashtags(sample["txt"].decode("utf-8")))
        return tuple(tags_from_value(json.loads(sample["json"]).get(tags_key)))
    except (KeyError, ValueError, AttributeError, UnicodeDecodeError):
        return ()


def _sample_item(prefix: str, key: str, sample: dict[str, bytes], label_key: str, tags_key: str = "") -> Item:
    """One webdataset sample (members of one key) as an Item."""
    full_key = f"{prefix}/{key}"
    image_ext = next((e for e in sample if e.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS), None)
    if image_ext is None:
        return Item(full_key, skip_reason="no_image")
    label = 0
    if label_key:
        label = _label_from(sample, label_key)
        if label is None:
            return Item(full_key, skip_reason="bad_label")
    tags = _tags_from(sample, tags_key) if tags_key else None
    return Item(full_key, label, sample[image_ext], tags=tags)


def _key_prefix(path: str, root: str) -> str:
    """The key prefix of the records of one input file: its path below `root`, without extension."""
    return os.path.splitext(os.path.relpath(path, root))[0]


def _common_root(files: Sequence[str]) -> str:
    """The deepest directory holding every file (key prefixes are relative to it, so they stay unique)."""
    return os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])


@dataclasses.dataclass(frozen=True)
class WebDatasetSource:
    """Webdataset tar shards (img2dataset output); a task is one tar file."""

    files: tuple[str, ...]
    root: str
    label_key: str = ""
    tags_key: str = ""  # 'txt' (#hashtags of the .txt member) or a json field (a list of tags, or a caption)

    def describe(self) -> dict[str, Any]:
        """What identifies this input, for the plan and provenance."""
        return {"kind": "webdataset", "files": len(self.files), "files_hash": hash_strings(list(self.files)),
                "label_key": self.label_key, "tags_key": self.tags_key}

    def plan(self) -> list[str]:
        """One task per tar file."""
        return list(self.files)

    def read(self, path: str) -> Iterator[Item]:
        """Streams one tar: members are read as bytes and grouped by key; unsafe members are counted."""
        prefix = _key_prefix(path, self.root)
        try:
            tar = tarfile.open(path, mode="r|*")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UnreadableInput(f"Cannot read tar shard {path!r} ({e}); {_UNREADABLE_FIX}") from e
        key, sample = None, {}
        with tar:
            try:
                for member in tar:
                    if member.isdir():
                        continue
                    if is_unsafe_member_name(member.name):
                        yield Item(f"{prefix}/{member.name}", skip_reason="unsafe_path")
                        continue
                    if not member.isfile():
                        yield Item(f"{prefix}/{member.name}", skip_reason="not_a_file")
                        continue
                    member_key, extension = _split_member_name(member.name)
                    if member_key != key and key is not None:
                        yield _sample_item(prefix, key, sample, self.label_key, self.tags_key)
                        sample = {}
                    key = member_key
                    sample[extension] = tar.extractfile(member).read()
            except (tarfile.TarError, OSError, EOFError):
                yield Item(f"{prefix}/<rest of shard>", skip_reason="truncated_shard")
                return  # The sample being read when the stream broke may be incomplete: drop it.
        if key is not None:
            yield _sample_item(prefix, key, sample, self.label_key, self.tags_key)


def _parquet_image_bytes(value: Any) -> bytes | None:
    """Image bytes from a parquet cell: raw bytes or a {'bytes': ...} struct (Hugging Face datasets)."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return value if isinstance(value, (bytes, bytearray)) else None


@dataclasses.dataclass(frozen=True)
class ParquetSource:
    """Parquet files with an image-bytes column; a task is one file."""

    files: tuple[str, ...]
    root: str
    image_column: str = ""
    label_key: str = ""
    tags_key: str = ""  # a column: a list of tags, or a caption whose #hashtags are the tags

    def describe(self) -> dict[str, Any]:
        """What identifies this input, for the plan and provenance."""
        return {"kind": "parquet", "files": len(self.files), "files_hash": hash_strings(list(self.files)),
                "image_column": self.image_column, "label_key": self.label_key, "tags_key": self.tags_key}

    def plan(self) -> list[str]:
        """One task per parquet file."""
        return list(self.files)

    def read(self, path: str) -> Iterator[Item]:
        """Streams the rows of one file in record batches."""
        import pyarrow.parquet as pq

        prefix = _key_prefix(path, self.root)
        try:
            parquet = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError variants
            raise UnreadableInput(f"Cannot read parquet file {path!r} ({e}); {_UNREADABLE_FIX}") from e
        names = parquet.schema_arrow.names
        image_column = self.image_column or next((c for c in PARQUET_IMAGE_COLUMNS if c in names), "")
        if image_column not in names:
            raise records.DatasetError(f"Parquet file {path!r} has no image column {image_column or '(any of ' + str(PARQUET_IMAGE_COLUMNS) + ')'}; "
                                       f"columns: {names}. Pass --image_column=NAME.")
        for column, flag in ((self.label_key, "--label_key"), (self.tags_key, "--tags_key")):
            if column and column not in names:
                raise records.DatasetError(f"Parquet file {path!r} has no column {column!r} ({flag}); columns: "
                                           f"{names}. Fix {flag}.")
        columns = [image_column] + list(dict.fromkeys(c for c in ("key", self.label_key, self.tags_key)
                                                      if c and c in names))
        row = 0
        for batch in parquet.iter_batches(batch_size=256, columns=columns):
            for values in batch.to_pylist():
                key = f"{prefix}/{values.get('key') or row}"
                row += 1
                label = values.get(self.label_key, 0) if self.label_key else 0
                if not isinstance(label, int) or label < 0:
                    yield Item(key, skip_reason="bad_label")
                    continue
                image = _parquet_image_bytes(values[image_column])
                tags = tuple(tags_from_value(values.get(self.tags_key))) if self.tags_key else None
                yield Item(key, label, image, tags=tags) if image is not None else Item(key, skip_reason="no_image")


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """A prepared TFDS dataset (array_record), read with tfds.data_source; a task is an index range."""

    name: str
    data_dir: str
    split: str
    examples_per_shard: int

    def describe(self) -> dict[str, Any]:
        """What identifies this input, for the plan and provenance."""
        return {"kind": "tfds", "name": self.name, "data_dir": self.data_dir, "split": self.split}

    def open(self):
        """The data source of the split, images left encoded."""
        import tensorflow_datasets as tfds

        from mim_jax.data import sources

        if os.path.isdir(self.name):
            return sources.open_tfds_split(self.name, self.split)
        try:
            return tfds.data_source(self.name, split=self.split, data_dir=self.data_dir or None, download=False,
                                    decoders={"image": tfds.decode.SkipDecoding()})
        except Exception as e:
            raise records.DatasetError(
                f"tfds:{self.name} split {self.split!r} cannot be opened from data_dir={self.data_dir or '(default)'!r} "
                f"({type(e).__name__}: {e}); prepare it with file_format='array_record' or pass --tfds_data_dir.") from e

    def classes(self) -> list[str]:
        """Class names of the 'label' feature."""
        import tensorflow_datasets as tfds

        from mim_jax.data import sources

        if os.path.isdir(self.name):
            return sources.tfds_class_names(self.name)
        info = tfds.builder(self.name, data_dir=self.data_dir or None).info
        label = info.features["label"] if "label" in info.features else None
        return list(label.names) if label is not None and hasattr(label, "names") else UNLABELED

    def plan(self) -> list[tuple[int, int]]:
        """Index ranges of examples_per_shard."""
        n = len(self.open())
        if n == 0:
            raise records.DatasetError(f"tfds:{self.name} split {self.split!r} is empty.")
        return [(i, min(i + self.examples_per_shard, n)) for i in range(0, n, self.examples_per_shard)]

    def read(self, task: tuple[int, int]) -> Iterator[Item]:
        """Yields the examples of one index range."""
        from mim_jax.data.sources import tfds_key

        source = self.open()
        for i in range(*task):
            example = source[i]
            yield Item(tfds_key(self.split, i), int(example.get("label", 0)), example["image"])


Source = ImageFolderSource | WebDatasetSource | ParquetSource | TfdsSource


def open_source(spec: str, *, split: str, examples_per_shard: int, out_dir: str, class_index: str = "",
                existing_classes: list[str] | None = None, label_key: str = "", image_column: str = "",
                tfds_data_dir: str = "", tfds_split: str = "", tags_key: str = "") -> tuple[Source, list[str] | None]:
    """Parses --source=KIND:LOCATION into a source and its class names (None: from the labels seen)."""
    kind, _, location = spec.partition(":")
    if not location:
        raise records.DatasetError(f"--source={spec!r}: use imagefolder:PATH, webdataset:GLOB, parquet:GLOB or "
                                   f"tfds:NAME.")
    given = _read_class_index(class_index) if class_index else None
    if kind == "imagefolder":
        root = os.path.abspath(os.path.expanduser(location))
        if not os.path.isdir(root):
            raise records.DatasetError(f"imagefolder:{location}: {root!r} is not a directory; pass the folder "
                                       f"that holds one sub-folder per class.")
        if out_dir == root or out_dir.startswith(root + os.sep):
            raise records.DatasetError(f"--out={out_dir!r} lies inside imagefolder:{location}; write the dataset "
                                       f"outside the image folder.")
        folders = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        if not folders:
            raise records.DatasetError(f"imagefolder:{location}: {root!r} has no class folders; expected "
                                       f"{root}/<class>/<image file>.")
        classes = given or existing_classes or folders
        return ImageFolderSource(root, tuple(classes), examples_per_shard), list(classes)
    if kind == "webdataset":
        files = _expand_glob(kind, location)
        return WebDatasetSource(tuple(files), _common_root(files), label_key, tags_key), given
    if kind == "parquet":
        files = _expand_glob(kind, location)
        return ParquetSource(tuple(files), _common_root(files), image_column, label_key, tags_key), given
    if kind == "tfds":
        source = TfdsSource(location, tfds_data_dir, tfds_split or split, examples_per_shard)
        return source, given or source.classes()
    raise records.DatasetError(f"--source={spec!r}: unknown kind {kind!r}; use imagefolder:PATH, "
                               f"webdataset:GLOB, parquet:GLOB or tfds:NAME.")
