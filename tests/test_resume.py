"""Start rules: own checkpoint > ckpt.resume_from > init_from (weights only, with a key report) > scratch."""
import jax
import numpy as np
import pytest
from flax import traverse_util

from conftest import damage, make_run_dir, tiny_pretrain_config
from mim_jax.errors import ConfigError
from mim_jax.parallel.sharding import make_mesh
from mim_jax.train import checkpoints, resume
from mim_jax.train.program import build_program, model_signature

pytestmark = pytest.mark.fake_devices  # meshes over the 8 fake CPU devices


def flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def assert_trees_equal(a, b):
    (la, ta), (lb, tb) = jax.tree_util.tree_flatten_with_path(a), jax.tree_util.tree_flatten_with_path(b)
    assert ta == tb
    for (path, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A run dir (seed 3) with a checkpoint at step 4, and its params."""
    run_dir = str(tmp_path_factory.mktemp("source"))
    return run_dir, make_run_dir(run_dir, tiny_pretrain_config("unused"), seed=3, step=4)


def start(config, workdir):
    program = build_program(config, make_mesh(config.mesh))
    with checkpoints.checkpoint_manager(workdir, 2, False) as manager:
        return resume.start_state(config, program, manager)


@pytest.mark.slow
def test_init_from_loads_the_encoder_only(source_run, tmp_path, capsys):
    run_dir, source = source_run
    config = tiny_pretrain_config("unused")
    config.mae.decoder.width = 24  # another decoder: only the encoder can come from the source run
    config.init_from = run_dir
    step, state = start(config, str(tmp_path / "new"))
    assert step == 0 and int(state.step) == 0
    assert_trees_equal(state.params["encoder"], source["encoder"])
    scratch_config = tiny_pretrain_config("unused")
    scratch_config.mae.decoder.width = 24
    _, scratch = start(scratch_config, str(tmp_path / "scratch"))
    assert_trees_equal(state.params["decoder"], scratch.params["decoder"])  # the run's own init (seed 0)
    assert_trees_equal(state.opt_state, scratch.opt_state)  # fresh AdamW moments
    out = capsys.readouterr().out
    n = len(flat(source["encoder"]))
    assert f"Initializing weights from {run_dir} (step 4, subtree 'encoder'): loaded {n}, missing 0, " \
           f"unexpected 0 parameter arrays" in out
    assert "Starting from scratch" in out


@pytest.mark.slow
def test_init_from_a_converted_weights_file(source_run, tmp_path, capsys):
    """init_from also takes a weights file mim_jax.convert reads (here the mim_jax format of the source encoder)."""
    from mim_jax.convert.native import save_native
    from mim_jax.models.teachers import encoder_arch
    _, source = source_run
    config = tiny_pretrain_config("unused")
    path = str(tmp_path / "encoder.safetensors")
    save_native({"encoder": jax.device_get(source["encoder"])}, encoder_arch(config.model), path)
    config.init_from = path
    step, state = start(config, str(tmp_path / "new"))
    assert step == 0
    assert_trees_equal(state.params["encoder"], source["encoder"])
    n = len(flat(source["encoder"]))
    assert f"Initializing weights from {path} (step file, subtree 'encoder'): loaded {n}, missing 0, " \
           f"unexpected 0 parameter arrays" in capsys.readouterr().out


def test_init_from_reports_missing_and_unexpected_keys():
    params = {"encoder": {"a": np.zeros(2), "b": np.zeros(3)}}
    source = {"encoder": {"a": np.ones(2), "c": np.ones(1)}, "decoder": {"x": np.ones(1)}}
    shardings = {"encoder": {"a": None, "b": None}}
    merged, report = resume.merge_weights(params, source, "encoder", shardings)
    assert report == {"loaded": ["a"], "missing": ["b"], "unexpected": ["c"]}
    np.testing.assert_array_equal(merged["encoder"]["a"], np.ones(2))
    np.testing.assert_array_equal(merged["encoder"]["b"], np.zeros(3))
    assert resume.format_report(report) == "loaded 1, missing 1 [b], unexpected 1 [c] parameter arrays"
    with pytest.raises(ConfigError, match=r"parameter shapes differ under 'params' \(encoder/a: init_from \(3,\) "
                                          r"vs this model \(2,\)"):
        resume.merge_weights(params, {"encoder": {"a": np.ones(3)}}, "", {"encoder": {"a": None, "b": None}})
    with pytest.raises(ConfigError, match="init_from_subtree='head': the init_from run has no such"):
        resume.merge_weights(params, source, "head", shardings)


@pytest.mark.slow
def test_resume_from_path_restores_full_state_and_own_checkpoint_wins(source_run, tmp_path, capsys):
    run_dir, source = source_run
    config = tiny_pretrain_config("unused")
    config.ckpt.resume_from = f"{run_dir}/checkpoints/4"
    config.init_from = run_dir  # lower priority than resume_from
    workdir = str(tmp_path / "copy")
    step, state = start(config, workdir)
    assert step == 4 and int(state.step) == 0  # make_run_dir saved a fresh state under step 4
    assert_trees_equal(state.params, source)
    assert "of ckpt.resume_from=" in capsys.readouterr().out
    with checkpoints.checkpoint_manager(workdir, 2, False) as manager:
        checkpoints.save(manager, 6, state, {"signature": model_signature(config)})
    step, _ = start(config, workdir)
    assert step == 6 and "Resuming from checkpoint step 6 in" in capsys.readouterr().out
    other = tiny_pretrain_config("unused")
    other.model.width, other.ckpt.resume_from = 64, run_dir
    with pytest.raises(ConfigError, match=r"belongs to another model \(model.width: checkpoint 32 vs config 64\)"):
        start(other, str(tmp_path / "other"))


@pytest.mark.slow
def test_resume_from_a_run_with_a_damaged_step_reads_the_previous_one_and_moves_nothing(tmp_path, capsys):
    config = tiny_pretrain_config("unused")
    run_dir = str(tmp_path / "source")
    older = make_run_dir(run_dir, config, seed=3, step=4)
    make_run_dir(run_dir, config, seed=5, step=6)
    damage(f"{run_dir}/checkpoints/6")
    listing = sorted(str(p.relative_to(run_dir)) for p in (tmp_path / "source").rglob("*"))
    config.ckpt.resume_from = run_dir
    step, state = start(config, str(tmp_path / "new"))
    assert step == 4
    assert_trees_equal(state.params, older)
    assert f"Warning: checkpoint {run_dir}/checkpoints/6 is damaged (" in capsys.readouterr().err
    assert sorted(str(p.relative_to(run_dir)) for p in (tmp_path / "source").rglob("*")) == listing
