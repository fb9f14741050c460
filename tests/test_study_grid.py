"""Study grids: cell names and resolved configs of the demo and paper grids, selections and one-line refusals."""
import re

import pytest

from mim_jax.errors import ConfigError
from mim_jax.objectives import registry
from mim_jax.study import grid, requirements, runner
from mim_jax.study.grid import Axis, Study, Value


def test_demo_grid_names_and_resolved_configs():
    study = runner.load_study("configs/studies/demo.py")
    cells = grid.expand(study)
    assert [c.name for c in cells] == [f"{m}_{d}_{n}" for m in ("small", "base") for d in ("256", "2k", "20k")
                                       for n in ("100", "400")]
    cell = next(c for c in cells if c.name == "base_2k_400")
    config = grid.resolve_config(cell)
    assert (config.model.width, config.model.depth, config.model.heads) == (192, 4, 3)
    assert (config.data.subset.kind, config.data.subset.count, config.total_steps) == ("random", 2048, 400)
    assert config.optim.schedule == "step" and config.evals.objective_loss.at_end
    assert grid.resolve_config(next(c for c in cells if c.name == "small_20k_100")).data.subset.kind == "all"
    assert cell.x("data") == 2048 and cell.label("length") == "400"


def test_lu_grid_is_3_models_x_5_subsets_x_2_targets_with_the_paper_schedule():
    cells = grid.expand(runner.load_study("configs/studies/lu2023.py"))
    assert len(cells) == 30 and cells[0].name == "B16_0.5M_clip" and cells[-1].name == "H16_100M_rgb"
    config = grid.resolve_config(next(c for c in cells if c.name == "H16_10M_clip"))
    assert config.objective == "mae_teacher" and config.teacher.type == "clip"
    assert (config.model.variant, config.model.patch_size, config.mae.decoder.depth) == ("H/14", 16, 4)
    # 90 epochs of 10M images at batch 4096, 40 warmup epochs; the slice planned for H/14
    assert config.total_steps == 90 * 10_000_000 // 4096 and config.optim.warmup_steps == 40 * 10_000_000 // 4096
    assert config.data.global_batch_size == 4096 and config.plan.topology == "v5p:2x2x4"
    rgb = grid.resolve_config(next(c for c in cells if c.name == "B16_100M_rgb"))
    assert rgb.objective == "mae" and rgb.total_steps == 15 * 100_000_000 // 4096
    assert rgb.optim.warmup_steps == 100_000_000 // 4096 and rgb.data.subset.count == 100_000_000


def test_xie_and_maws_grids_expand_and_name_what_they_need():
    xie = grid.expand(runner.load_study("configs/studies/xie2022.py"))
    assert len(xie) == 8 * 5 * 3
    vit_h = grid.resolve_config(next(c for c in xie if c.name == "ViT-H_IN1K-50_250K"))
    assert (vit_h.model.variant, vit_h.model.patch_size, vit_h.total_steps) == ("H/14", 16, 250_000)
    assert vit_h.data.subset.fraction == 0.5 and vit_h.optim.schedule == "step"
    swin = next(c for c in xie if c.name.startswith("SwinV2-S"))
    assert "swinv2_s" in swin.needs["model"]
    maws = grid.expand(runner.load_study("configs/studies/maws2023.py"))
    assert [c.name for c in maws[:3]] == ["B16_mae", "B16_wsp", "B16_maws"]
    assert grid.dependencies(maws[2], maws) == ["B16_mae"]
    assert grid.resolve_refs(maws[2], maws, "/r")["init_from"] == "/r/B16_mae"


def test_missing_objective_and_model_are_refused_in_one_line_by_name(monkeypatch):
    maws = grid.expand(runner.load_study("configs/studies/maws2023.py"))
    grid.check_available(maws, "maws2023")  # WSP is registered: every cell can run
    monkeypatch.delitem(registry.OBJECTIVES, "wsp")  # a checkout without the WSP objective
    with pytest.raises(ConfigError) as err:
        grid.check_available(maws, "maws2023")
    assert "needs objective 'wsp', which is not registered" in str(err.value) and "\n" not in str(err.value)
    grid.check_available([c for c in maws if c.name.endswith("_mae")], "maws2023")  # the MAE cells are there
    assert requirements.missing_model("B/16") is None
    assert "needs model 'nope_xl', which is in no size table" in requirements.missing_model("nope_xl")


def test_unknown_axis_value_and_cells_regex_fail_naming_them():
    with pytest.raises(ConfigError, match="unknown value 'huge' of axis 'model'; use one of \\['small', 'base'\\]"):
        runner.load_study("configs/studies/demo.py:model=huge")
    with pytest.raises(ConfigError, match="'colour=red' is not axis=label"):
        runner.load_study("configs/studies/demo.py:colour=red")
    cells = grid.expand(runner.load_study("configs/studies/demo.py:model=small,data=256"))
    assert [c.name for c in cells] == ["small_256_100", "small_256_400"]
    with pytest.raises(ConfigError, match=re.escape("--cells='^xl' matches none of the 2 cells of study demo")):
        grid.select_cells(cells, "^xl", "demo")
    assert [c.name for c in grid.select_cells(cells, "400$", "demo")] == ["small_256_400"]


def test_a_value_naming_a_field_the_config_lacks_is_refused():
    study = Study("s", "configs/demo.py", (Axis("model", (Value("a", overrides={"model.colour": 1}),)),))
    with pytest.raises(ConfigError, match="cell a: the config has no field 'model.colour'"):
        grid.resolve_config(grid.expand(study)[0])


def test_flags_round_trip_through_the_pretrain_cli_parser():
    from mim_jax.cluster.launch_check import load_pretrain_config
    cell = grid.expand(runner.load_study("configs/studies/demo.py:model=base,data=2k,length=400"))[0]
    overrides = {**cell.overrides, "ckpt.keep_steps": (88,), "data.crop_scale": (0.3, 1.0)}
    parsed = load_pretrain_config(grid.pretrain_args(cell, "/tmp/w", overrides))
    direct = grid.resolve_config(cell, overrides)
    assert parsed.to_dict() == direct.to_dict()
