"""collect and plots on a study root written here: CSV columns, relative compute, markdown, series per figure."""
import csv
import json
import os

import pytest

from mim_jax.study import collect, grid, plots, runner
from mim_jax.train.program import train_flops_per_step

CELLS = ("small_256_100", "small_256_400", "small_2k_100", "small_2k_400", "base_256_100", "base_256_400")


def write_root(root):
    """A demo-study root as the runner and pretraining leave it (configs resolved from the real grid)."""
    cells = {c.name: c for c in grid.expand(runner.load_study("configs/studies/demo.py"))}
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "study.json"), "w") as f:
        json.dump({"study": "demo", "spec": "configs/studies/demo.py", "cells": [*CELLS, "base_20k_400"]}, f)
    truth = {}
    for i, name in enumerate(CELLS):
        cell, d = cells[name], os.path.join(root, name)
        os.makedirs(os.path.join(d, "evals"))
        config = grid.resolve_config(cell)
        with open(os.path.join(d, "config.json"), "w") as f:
            f.write(config.to_json_best_effort())
        with open(os.path.join(d, "cell.json"), "w") as f:
            json.dump({"axes": {a: v.label for a, v in cell.values.items()},
                       "x": {a: v.x for a, v in cell.values.items()}, "branch": None}, f)
        steps = config.total_steps
        with open(os.path.join(d, "metrics.jsonl"), "w") as f:
            for s in (10, steps // 2, steps):
                f.write(json.dumps({"step": s, "loss": 1.0 / s + i}) + "\n")
            f.write('{"step": 99')  # a line cut short by a kill
        for evname, result in (("objective_loss", {"type": "objective_loss", "loss": 0.5 + i}),
                               ("knn", {"type": "knn", "top1": 0.1 * i}),
                               ("knn_random_init", {"type": "knn", "top1": 0.99}),
                               ("fewshot", {"type": "fewshot", "1shot_top1": 0.2, "25shot_top1": 0.3 + i / 100})):
            with open(os.path.join(d, "evals", f"{evname}.json"), "w") as f:
                json.dump(result, f)
        with open(os.path.join(d, "study_state.json"), "w") as f:
            json.dump({"state": "done", "seconds": 10.0 + i}, f)
        truth[name] = (config, i)
    return truth


def test_collect_writes_the_columns_and_relative_compute(tmp_path):
    root = str(tmp_path / "root")
    truth = write_root(root)
    rows = collect.collect_rows(root)
    header = collect.write_csv(rows, os.path.join(root, "study.csv"))
    assert header == ["cell", "model", "data", "length", "model_x", "data_x", "length_x", "state", "steps",
                      "final_train_loss", "val_loss", "linear_probe_top1", "knn_top1", "fewshot_top1",
                      "finetune_top1", "flops", "relative_compute", "branched_from", "wall_seconds"]
    with open(os.path.join(root, "study.csv")) as f:
        table = {r["cell"]: r for r in csv.DictReader(f)}
    assert table["base_20k_400"]["state"] == "pending" and table["base_20k_400"]["flops"] == ""
    reference = train_flops_per_step(truth["small_256_100"][0]) * 100  # the smallest model's shortest run
    for name, (config, i) in truth.items():
        r = table[name]
        flops = train_flops_per_step(config) * config.total_steps
        assert float(r["flops"]) == pytest.approx(flops, rel=1e-5)
        assert float(r["relative_compute"]) == pytest.approx(flops / reference, rel=1e-5)
        assert float(r["final_train_loss"]) == pytest.approx(1.0 / config.total_steps + i, rel=1e-5)
        assert float(r["val_loss"]) == pytest.approx(0.5 + i) and float(r["knn_top1"]) == pytest.approx(0.1 * i)
        assert float(r["fewshot_top1"]) == pytest.approx(0.3 + i / 100)  # the most shots
        assert r["state"] == "done" and r["linear_probe_top1"] == ""
    assert float(table["small_256_400"]["relative_compute"]) == pytest.approx(4.0)
    collect.write_markdown(rows, os.path.join(root, "study.md"), "Study demo")
    md = open(os.path.join(root, "study.md")).read().splitlines()
    assert md[2].startswith("| cell | model | data | length | final_train_loss | val_loss | knn_top1 |")
    assert len([line for line in md if line.startswith("| small_") or line.startswith("| base_")]) == 7
    status = collect.status_lines(root)
    assert status[1].split()[:4] == ["small_256_100", "done", "step", "100"]
    assert status[-1].split()[:2] == ["base_20k_400", "pending"]


def test_plots_draw_one_series_per_group(tmp_path):
    root = str(tmp_path / "root")
    write_root(root)
    rows = collect.collect_rows(root)
    drawn = plots.write_plots(root, rows, "demo", "knn/top1")
    # val loss vs compute: model x data = small 256, small 2k, base 256; metric vs data: model x length = 4;
    # training curves: the 6 cells that logged; no init axis -> no init figure
    assert drawn == {"val_loss_vs_compute": 3, "metric_vs_data": 4, "training_curves": 6}
    for name in drawn:
        for ext in ("png", "svg"):
            assert os.path.getsize(os.path.join(root, "plots", f"{name}.{ext}")) > 1000
    svg = open(os.path.join(root, "plots", "val_loss_vs_compute.svg")).read()
    assert all(label in svg for label in ("small 256", "small 2k", "base 256")) and "base 2k" not in svg
    rows_init = [dict(r, init="mae" if i % 2 else "wsp", model_x=float(1 + i // 2)) for i, r in enumerate(rows[:6])]
    assert plots.init_comparison(rows_init, str(tmp_path / "p"), "maws", "knn/top1") == 2
