"""Checkpoints: round trip, restore onto another mesh, model mismatch named, damaged steps, run-dir parsing."""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from conftest import damage, tiny_pretrain_config
from mim_jax import workdir as run_dirs
from mim_jax.config.run_config import read_run_config
from mim_jax.config.validation import ConfigError
from mim_jax.objectives.mae import build_mae, init_inputs
from mim_jax.parallel.sharding import logical_rules, make_mesh
from mim_jax.train import checkpoints, optim
from mim_jax.train.program import SHAPE_FREE_MODEL_FIELDS, model_signature
from mim_jax.train.state import abstract_train_state, create_train_state

pytestmark = pytest.mark.fake_devices  # meshes over the 8 fake CPU devices


def build(config, mesh_shape):
    mesh_cfg = ml_collections.ConfigDict(dict(shape=mesh_shape, rules=config.mesh.rules))
    mesh, rules = make_mesh(mesh_cfg), logical_rules(mesh_cfg)
    model = build_mae(config)
    tx = optim.make_optimizer(config.optim, 16, 10)
    return model, tx, mesh, rules


@pytest.fixture
def open_manager():
    """checkpoints.checkpoint_manager, each manager closed at teardown (orbax keeps its threads until close())."""
    opened = []

    def open_(*args, **kwargs):
        opened.append(checkpoints.checkpoint_manager(*args, **kwargs))
        return opened[-1]
    yield open_
    for manager in opened:
        manager.close()


@pytest.mark.slow
def test_save_then_restore_on_another_mesh(open_manager, tmp_path):
    config = tiny_pretrain_config("unused")
    model, tx, mesh, rules = build(config, (2, 4, 1))
    state, _ = create_train_state(model, init_inputs(model, None), tx, mesh, rules, seed=3)
    manager = open_manager(str(tmp_path), max_to_keep=2, async_save=True)
    signature = model_signature(config)
    checkpoints.save(manager, 7, state, {"signature": signature, "step": 7})
    manager.wait_until_finished()

    model, tx, mesh2, rules = build(config, (1, 4, 2))
    abstract, _ = abstract_train_state(model, init_inputs(model, None), tx, mesh2, rules)
    step, restored, meta = checkpoints.restore_latest(
        open_manager(str(tmp_path), 2, False), abstract, signature)
    assert step == 7 and meta["step"] == 7
    assert int(restored.step) == int(state.step)
    for a, b in zip(jax.tree.leaves((restored.params, restored.opt_state)), jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kernel = restored.params["encoder"]["blocks"]["layers"]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.mesh.shape == mesh2.shape


@pytest.mark.slow
def test_restore_into_another_model_names_the_fields(open_manager, tmp_path):
    config = tiny_pretrain_config("unused")
    model, tx, mesh, rules = build(config, (8, 1, 1))
    state, _ = create_train_state(model, init_inputs(model, None), tx, mesh, rules, seed=0)
    manager = open_manager(str(tmp_path), 2, False)
    checkpoints.save(manager, 1, state, {"signature": model_signature(config)})
    other = tiny_pretrain_config("unused")
    other.model.width = 64
    other.model.depth = 2
    with pytest.raises(ConfigError, match=r"model.depth: checkpoint 1 vs config 2; model.width: checkpoint 32 vs "
                                          r"config 64"):
        checkpoints.restore_latest(manager, None, model_signature(other))


def test_empty_dir_restores_nothing(open_manager, tmp_path):
    assert checkpoints.restore_latest(open_manager(str(tmp_path), 1, False), None) is None


def test_locate_checkpoint(tmp_path):
    assert run_dirs.locate_checkpoint(str(tmp_path)) == (str(tmp_path), None)
    assert run_dirs.locate_checkpoint(str(tmp_path / "checkpoints" / "400")) == (str(tmp_path), 400)
    with pytest.raises(ConfigError, match="has no config.json"):
        read_run_config(str(tmp_path))


def test_old_run_config_and_signature_read_with_the_new_field_names(tmp_path):
    """Runs written before the objective blocks (model.mask_ratio / norm_pix_loss / decoder) still load."""
    old = tiny_pretrain_config("unused").to_dict()
    mae_block = old.pop("mae")
    old["model"].update(mask_ratio=0.6, norm_pix_loss=False, decoder=mae_block["decoder"])
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = read_run_config(str(tmp_path / "checkpoints" / "3"))
    assert (config.mae.mask_ratio, config.mae.norm_pix_loss) == (0.6, False)
    assert config.mae.decoder.to_dict() == mae_block["decoder"] and "decoder" not in config.model
    # An old signature: the model fields minus the shape-free ones, with the decoder still under model.
    saved = {"objective": "mae", "model": {k: v for k, v in old["model"].items()
                                           if k not in SHAPE_FREE_MODEL_FIELDS + ("mask_ratio", "norm_pix_loss")}}
    assert "decoder" in saved["model"]
    checkpoints.check_signature(saved, model_signature(tiny_pretrain_config("unused")), str(tmp_path))


@pytest.mark.slow
def test_damaged_step_falls_back_to_the_previous_one(open_manager, tmp_path, capsys):
    config = tiny_pretrain_config("unused")
    model, tx, mesh, rules = build(config, (8, 1, 1))
    manager = open_manager(str(tmp_path), 3, False)
    signature = model_signature(config)
    states = {}
    for step in (1, 2):
        states[step], _ = create_train_state(model, init_inputs(model, None), tx, mesh, rules, seed=step)
        checkpoints.save(manager, step, states[step], {"signature": signature})
    damage(str(tmp_path / "checkpoints" / "2"))
    abstract, _ = abstract_train_state(model, init_inputs(model, None), tx, mesh, rules)
    step, restored, _ = checkpoints.restore_latest(manager, abstract, signature)
    assert step == 1
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(states[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert f"Warning: checkpoint {tmp_path}/checkpoints/2 is damaged (" in capsys.readouterr().err
    assert os.listdir(tmp_path / "checkpoints_damaged") == ["2"] and manager.all_steps() == [1]  # kept, set aside
    damage(str(tmp_path / "checkpoints" / "1"))  # nothing readable left: an error, and nothing is moved
    with pytest.raises(ConfigError, match=r"no checkpoint in .*checkpoints can be read \(steps \[1\]; step 1: "):
        checkpoints.restore_latest(manager, abstract, signature)
    assert manager.all_steps() == [1]


def test_keep_steps_are_kept_beyond_max_to_keep(open_manager, tmp_path):
    import jax.numpy as jnp
    manager = open_manager(str(tmp_path), max_to_keep=2, async_save=False, keep_steps=(3, 5))
    for step in range(1, 9):
        checkpoints.save(manager, step, {"x": jnp.full((2,), step, jnp.float32)}, {"step": step})
    manager.wait_until_finished()
    assert sorted(manager.all_steps()) == [3, 5, 7, 8]  # the branch points and the latest two
    plain = open_manager(str(tmp_path / "plain"), max_to_keep=2, async_save=False)
    for step in range(1, 5):
        checkpoints.save(plain, step, {"x": jnp.zeros(2)}, {"step": step})
    plain.wait_until_finished()
    assert sorted(plain.all_steps()) == [3, 4]
    config = tiny_pretrain_config("")
    config.ckpt.keep_steps = (0,)
    with pytest.raises(ConfigError, match=r"ckpt.keep_steps=\(0,\)"):
        from mim_jax.config.validation import validate_fault_tolerance
        validate_fault_tolerance(config)
