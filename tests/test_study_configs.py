"""Every paper grid's cells carry a TPU slice: the smallest and the largest runnable cell of each are planned there."""
import pytest

from mim_jax.study import grid, requirements, runner
from mim_jax.train.program import train_flops_per_step

STUDIES = ("lu2023", "xie2022", "maws2023")


def extreme_cell(study_name: str, which: str):
    """(cell, config) with the fewest / most FLOPs per step among the grid's cells."""
    cells = grid.expand(runner.load_study(f"configs/studies/{study_name}.py"))
    configs = {c.name: grid.resolve_config(c) for c in cells}
    pick = min if which == "smallest" else max
    cell = pick(cells, key=lambda c: train_flops_per_step(configs[c.name]))
    return cell, configs[cell.name]


@pytest.mark.parametrize("study_name", STUDIES)
def test_every_runnable_cell_names_a_tpu_slice(study_name):
    for cell in grid.expand(runner.load_study(f"configs/studies/{study_name}.py")):
        if requirements.first_missing(cell.needs) is None:
            assert grid.resolve_config(cell).plan.topology.startswith("v5p:"), cell.name


@pytest.mark.parametrize("study_name", STUDIES)
def test_every_cell_of_the_paper_grids_is_a_valid_config(study_name):
    """All cells can run today (WSP and SwinV2 have landed), and each resolved config passes validation."""
    from mim_jax.objectives import registry
    for cell in grid.expand(runner.load_study(f"configs/studies/{study_name}.py")):
        assert requirements.first_missing(cell.needs) is None, cell.name
        registry.validate(grid.resolve_config(cell), check_data_path=False)


@pytest.mark.slow
@pytest.mark.tpu_compile
@pytest.mark.paper_plans
@pytest.mark.parametrize("which", ["smallest", "largest"])
@pytest.mark.parametrize("study_name", STUDIES)
def test_smallest_and_largest_cell_fit_their_planned_slice(study_name, which):
    from mim_jax.cluster.plan import parse_topology, plan
    cell, config = extreme_cell(study_name, which)
    report = plan(config, parse_topology(config.plan.topology))
    assert report.fits, f"{cell.name} on {config.plan.topology}: {report.hbm_fraction:.0%} of HBM"
    assert report.model_flops_per_step == pytest.approx(train_flops_per_step(config))
    assert 0.5 < report.model_flops_per_step / report.xla_flops_per_step < 1.5  # ours vs XLA's count
