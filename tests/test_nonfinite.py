"""Non-finite policy: `stop` names the step and writes no checkpoint from it; `skip` leaves the state untouched,
counts skips in metrics.jsonl and stops after optim.max_consecutive_skips in a row."""
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import make_run_dir, tiny_pretrain_config
from mim_jax.train import checkpoints
from mim_jax.train import loop as pretrain
from mim_jax.train.nonfinite import NonFiniteError, NonFiniteWatch

pytestmark = pytest.mark.fake_devices  # meshes over the 8 fake CPU devices


def test_watch_names_the_first_offending_step():
    watch = NonFiniteWatch("stop", 10)
    for step, loss in ((1, 1.0), (2, 0.5)):
        watch.add(step, {"loss": jax.numpy.float32(loss)})
    watch.check()
    for step, loss in ((3, 0.4), (4, float("nan")), (5, float("inf"))):
        watch.add(step, {"loss": jax.numpy.float32(loss)})
    with pytest.raises(NonFiniteError, match=r"non-finite loss nan at step 4 \(optim.nonfinite='stop'\)"):
        watch.check()
    skip = NonFiniteWatch("skip", 3)
    for step, run in ((1, 0), (2, 1), (3, 2), (4, 0), (5, 1), (6, 2)):
        skip.add(step, {"loss": jax.numpy.float32(np.nan if run else 1.0), "consecutive_skips": run})
    skip.check()  # never 3 in a row
    skip.add(7, {"loss": jax.numpy.float32(np.nan), "consecutive_skips": 3})
    with pytest.raises(NonFiniteError, match=r"3 non-finite updates in a row skipped up to step 7 "
                                             r"\(optim.max_consecutive_skips=3\)"):
        skip.check()


@pytest.fixture(scope="module")
def poisoned_run(tiny_dataset, tmp_path_factory):
    """A run dir whose decoder prediction bias is NaN (every loss from it is NaN), and its params."""
    run_dir = str(tmp_path_factory.mktemp("poisoned"))
    return run_dir, make_run_dir(run_dir, tiny_pretrain_config(tiny_dataset), seed=0, step=1,
                                 poison="decoder/pred/bias")


def read_rows(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def nonfinite_config(dataset, run_dir, policy):
    config = tiny_pretrain_config(dataset)
    config.init_from, config.init_from_subtree = run_dir, ""
    config.optim.nonfinite, config.optim.max_consecutive_skips = policy, 3
    config.ckpt.every_steps = 2
    return config


@pytest.mark.slow
def test_stop_names_the_step_and_saves_nothing(tiny_dataset, poisoned_run, tmp_path):
    workdir = str(tmp_path / "stop")
    with pytest.raises(NonFiniteError, match=r"non-finite loss nan at step 1 "):
        pretrain.train(nonfinite_config(tiny_dataset, poisoned_run[0], "stop"), workdir)
    assert read_rows(workdir) == []
    with checkpoints.checkpoint_manager(workdir, 2, False) as manager:
        assert manager.all_steps() == []


@pytest.mark.slow
def test_skip_leaves_the_state_untouched_and_counts(tiny_dataset, poisoned_run, tmp_path):
    run_dir, poisoned = poisoned_run
    workdir = str(tmp_path / "skip")
    config = nonfinite_config(tiny_dataset, run_dir, "skip")
    with pytest.raises(NonFiniteError, match=r"3 non-finite updates in a row skipped up to step 3"):
        pretrain.train(config, workdir)
    rows = read_rows(workdir)
    assert [(r["step"], r["skipped_steps"], r["consecutive_skips"]) for r in rows] == [(1, 1, 1), (2, 2, 2)]
    assert all(np.isnan(r["loss"]) for r in rows)
    with checkpoints.checkpoint_manager(workdir, 2, False) as manager:
        assert manager.all_steps() == [2]  # step 3 broke the policy before its save
        restored = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    leaves = jax.tree_util.tree_leaves_with_path(restored["params"])
    expected = dict(jax.tree_util.tree_leaves_with_path(poisoned))
    assert len(leaves) == len(expected)
    for path, value in leaves:  # skipped updates: every param, finite or not, is exactly the init
        np.testing.assert_array_equal(np.asarray(value), expected[path], err_msg=jax.tree_util.keystr(path))
    assert int(restored["opt_state"]["total_notfinite"]) == 2 and int(restored["step"]) == 2
