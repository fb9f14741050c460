"""Tag vocabularies for ingest: class names with aliases, and how a sample's raw tags map onto class ids.

A vocabulary file (``--label_vocab=FILE``, UTF-8) lists one class per line; the class id is the line's
position among the non-blank lines (0-based). A line is either a class name alone or the name, a TAB and
comma-separated aliases that map to the same class::

    golden_retriever<TAB>goldenretriever,golden retriever
    tabby_cat<TAB>tabby,tabbycat
    beach

Names, aliases and tags are matched after `normalize`: case-folded, surrounding whitespace and leading
'#' removed, inner runs of spaces and hyphens turned into one '_' (so ``#Golden-Retriever`` matches
``golden_retriever``). Every name and alias must be unique across the file after normalizing.

A tag is a string (matched through the vocabulary) or an integer (a class id, which must be below the
number of classes). Tags come from a list (a json field, a parquet list column) or, in free text (a
caption, a .txt member), from its ``#hashtags``. Unknown tags are dropped and counted; a sample's label
set is its distinct known classes in the order of their first tag.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

from mim_jax.data.records import DatasetError

_HASHTAG = re.compile(r"#(\w[\w-]*)")
_SEPARATORS = re.compile(r"[\s-]+")
ALIAS_SEPARATOR = "\t"


def normalize(tag: str) -> str:
    """The form tags and vocabulary entries are compared in (case-folded, no '#', '_' for spaces/hyphens)."""
    return _SEPARATORS.sub("_", tag.strip().lstrip("#").strip().casefold())


def hashtags(text: str) -> list[str]:
    """The #hashtags of free text, in order, without the '#'."""
    return _HASHTAG.findall(text)


def tags_from_value(value: Any) -> list[str | int]:
    """Raw tags of one field value: a list's items, a string's #hashtags, an int as a class id; else none."""
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        return list(hashtags(value))
    if isinstance(value, (list, tuple)):
        return [v if isinstance(v, (int, str)) and not isinstance(v, bool) else str(v) for v in value]
    return []


@dataclasses.dataclass(frozen=True)
class TagMapping:
    """A sample's label set and how many of its tags were mapped / unknown."""

    labels: tuple[int, ...]
    mapped: int
    unknown: int


@dataclasses.dataclass(frozen=True)
class LabelVocab:
    """Class names and the normalized name/alias -> class id lookup of a vocabulary file."""

    path: str
    classes: tuple[str, ...]
    lookup: dict[str, int]

    def map_tags(self, tags: Iterable[str | int], where: str) -> TagMapping:
        """Maps raw tags to a label set; an integer id beyond the classes is a DatasetError naming `where`."""
        labels: dict[int, None] = {}
        mapped = unknown = 0
        for tag in tags:
            if isinstance(tag, int):
                if not 0 <= tag < len(self.classes):
                    raise DatasetError(
                        f"{where}: class id {tag} is beyond the {len(self.classes)} classes of "
                        f"--label_vocab={self.path}; tags given as integers must be class ids (line numbers) of it.")
                class_id = tag
            else:
                class_id = self.lookup.get(normalize(tag))
            if class_id is None:
                unknown += 1
                continue
            mapped += 1
            labels.setdefault(class_id)
        return TagMapping(tuple(labels), mapped, unknown)

    def fingerprint(self) -> list[str]:
        """What identifies the vocabulary's mapping (for ingest's resume check)."""
        return [f"{key}={value}" for key, value in sorted(self.lookup.items())] + list(self.classes)


def parse_vocab(lines: Sequence[str], path: str) -> LabelVocab:
    """A LabelVocab from the lines of a vocabulary file; DatasetError naming the file and line when malformed."""
    classes: list[str] = []
    lookup: dict[str, int] = {}
    line_of: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        name, _, aliases = line.partition(ALIAS_SEPARATOR)
        class_id = len(classes)
        classes.append(name.strip())
        for entry in dict.fromkeys([name, *(a for a in aliases.split(",") if a.strip())]):
            key = normalize(entry)
            if not key:
                raise DatasetError(f"--label_vocab={path} line {number}: {entry!r} is empty after normalizing; "
                                   f"write `class<TAB>alias1,alias2`.")
            if key in lookup and lookup[key] != class_id:
                raise DatasetError(f"--label_vocab={path} line {number}: {entry.strip()!r} duplicates "
                                   f"{classes[lookup[key]]!r} on line {line_of[key]}; every class name and alias "
                                   f"must be unique (after case-folding, '#' and '-'/' ' -> '_').")
            lookup[key], line_of[key] = class_id, number
    if not classes:
        raise DatasetError(f"--label_vocab={path} lists no classes; write one class per line "
                           f"(`class` or `class<TAB>alias1,alias2`).")
    return LabelVocab(path, tuple(classes), lookup)


def read_vocab(path: str) -> LabelVocab:
    """Reads a vocabulary file (module docstring); errors name the file and the fix."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"--label_vocab={path} cannot be read ({e}); pass a UTF-8 text file with one class "
                           f"per line.") from e
    return parse_vocab(lines, path)
