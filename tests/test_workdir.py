"""Workdir paths and writes: local paths become absolute, bucket URLs stay as given; atomic replace and append."""
import os

from mim_jax import workdir


def test_resolve_and_join(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert workdir.resolve("runs/a") == os.path.join(str(tmp_path), "runs", "a")
    assert workdir.resolve("~/x") == os.path.join(os.path.expanduser("~"), "x")
    assert workdir.resolve("gs://bucket/runs/a") == "gs://bucket/runs/a"  # never made into ./gs:/bucket/...
    assert workdir.is_remote("gs://bucket/a") and not workdir.is_remote("/data/a")
    assert workdir.join("gs://bucket/runs/a", "checkpoints") == "gs://bucket/runs/a/checkpoints"
    assert workdir.join("/r", "evals", "x.json") == "/r/evals/x.json"


def test_write_replaces_whole_file_and_append_adds(tmp_path):
    path = str(tmp_path / "sub" / "config.json")
    workdir.write_text(path, "first")
    workdir.write_text(path, "second")
    assert workdir.read_text(path) == "second" and sorted(os.listdir(tmp_path / "sub")) == ["config.json"]
    log = str(tmp_path / "metrics.jsonl")
    workdir.append_text(log, "a\n")
    workdir.append_text(log, "b\n")
    assert workdir.read_text(log) == "a\nb\n"
    workdir.make_dirs(str(tmp_path / "x" / "y"))
    assert workdir.is_dir(str(tmp_path / "x" / "y")) and workdir.exists(log) and not workdir.is_dir(log)
