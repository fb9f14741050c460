"""Shared first stages: which cells branch, where (7/8 of their length), and when they must not."""
import numpy as np

from mim_jax.study import branching, grid, runner


def demo_cells_and_configs(arg="model=small,data=256"):
    cells = grid.expand(runner.load_study(f"configs/studies/demo.py:{arg}"))
    return cells, {c.name: grid.resolve_config(c) for c in cells}


def test_shorter_cells_branch_from_the_longest_at_their_decay_point():
    cells, configs = demo_cells_and_configs()
    branches = branching.plan_branches(cells, configs)
    assert list(branches) == ["small_256_100"]
    b = branches["small_256_100"]
    assert (b.source, b.step) == ("small_256_400", round(0.875 * 100))
    # up to the branch step the two schedules agree (warmup, then the peak); after it they differ
    long_lr = branching.lr_values(configs["small_256_400"], 100)
    short_lr = branching.lr_values(configs["small_256_100"], 100)
    np.testing.assert_array_equal(long_lr[:b.step], short_lr[:b.step])
    assert short_lr[b.step] == np.float32(long_lr[b.step] * 0.1)
    assert branching.keep_steps("small_256_400", branches) == (88,)


def test_xie_lengths_branch_at_109375_and_218750():
    cells = grid.expand(runner.load_study("configs/studies/xie2022.py:model=ViT-B,data=IN1K"))
    plan = branching.plan_branches(cells, {c.name: grid.resolve_config(c) for c in cells})
    assert {k: (v.source, v.step) for k, v in plan.items()} == {
        "ViT-B_IN1K_125K": ("ViT-B_IN1K_500K", 109_375), "ViT-B_IN1K_250K": ("ViT-B_IN1K_500K", 218_750)}


def test_no_branch_when_the_schedules_or_configs_differ():
    cells, configs = demo_cells_and_configs()
    cosine = {k: v.copy_and_resolve_references() for k, v in configs.items()}
    for c in cosine.values():
        c.optim.schedule = "cosine"
    assert branching.plan_branches(cells, cosine) == {}
    warm = {k: v.copy_and_resolve_references() for k, v in configs.items()}
    warm["small_256_100"].optim.warmup_steps = 10  # a different warmup: the first stages differ
    assert branching.plan_branches(cells, warm) == {}
    seeded = {k: v.copy_and_resolve_references() for k, v in configs.items()}
    seeded["small_256_100"].seed = 1
    assert branching.plan_branches(cells, seeded) == {}
    # a study without a length axis never branches (Lu et al.)
    lu = grid.expand(runner.load_study("configs/studies/lu2023.py:model=B/16,data=0.5M|1M"))
    assert branching.plan_branches(lu, {c.name: grid.resolve_config(c) for c in lu}) == {}
