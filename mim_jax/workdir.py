"""Run directories on a local disk or in a bucket (gs://...): paths and file writes through etils.epath.

orbax (checkpoints) and TensorBoard take bucket paths themselves; config.json, metrics.jsonl and evals/*.json
go through these functions, so that a workdir such as gs://bucket/runs/x (what every worker of a TPU pod
shares) works like a local one. Local paths are made absolute; bucket paths are kept as given.
"""
from __future__ import annotations

import os
from typing import Optional

from etils import epath

CHECKPOINT_DIR = "checkpoints"  # WORKDIR/checkpoints/<step>/ (orbax)


def is_remote(path: str) -> bool:
    """Whether `path` is a URL such as gs://bucket/dir (rather than a local path)."""
    return "://" in str(path)


def resolve(path: str) -> str:
    """An absolute local path (user and relative parts expanded), or the URL unchanged."""
    return str(path) if is_remote(path) else os.path.abspath(os.path.expanduser(str(path)))


def join(path: str, *parts: str) -> str:
    """`path`/`parts` for local paths and URLs alike."""
    return str(epath.Path(path).joinpath(*parts))


def make_dirs(path: str) -> None:
    """Create directory `path` and its parents (no-op if it exists)."""
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def exists(path: str) -> bool:
    """Whether a file or directory exists at `path`."""
    return epath.Path(path).exists()


def is_dir(path: str) -> bool:
    """Whether `path` is a directory."""
    return epath.Path(path).is_dir()


def is_local_file(path: str) -> bool:
    """Whether `path` is a file on a local disk (e.g. a weights file, as opposed to a run directory)."""
    return not is_remote(path) and os.path.isfile(os.path.expanduser(str(path)))


def read_text(path: str) -> str:
    """The text of file `path`."""
    return epath.Path(path).read_text()


def write_text(path: str, text: str) -> None:
    """Replace file `path` with `text`: via a temporary file and a rename, so readers never see half a file."""
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(path):  # an object store writes an object whole
        target.write_text(text)
        return
    tmp = target.parent / f".{target.name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, target)


def append_text(path: str, text: str) -> None:
    """Append `text` to file `path` (created if missing)."""
    with epath.Path(path).open("a") as f:
        f.write(text)


def locate_checkpoint(path: str) -> tuple[str, Optional[int]]:
    """(run workdir, step or None for latest) from a workdir or a WORKDIR/checkpoints/<step> path."""
    path = os.path.abspath(os.path.expanduser(path))
    parent, name = os.path.split(path.rstrip("/"))
    if name.isdigit() and os.path.basename(parent) == CHECKPOINT_DIR:
        return os.path.dirname(parent), int(name)
    return path, None
