"""Evaluator plumbing: validation loss vs the train-step loss, mesh independence, config and input errors."""
import os

import jax
import ml_collections
import numpy as np
import pytest

from conftest import tiny_pretrain_config
from mim_jax.config import defaults, validation
from mim_jax.data import pipeline, records, synthetic
from mim_jax.errors import ConfigError
from mim_jax.evaluate.evaluators import EvalContext
from mim_jax.evaluate.reconstruction import validation_loss
from mim_jax.objectives import mae, registry
from mim_jax.objectives.mae import build_mae
from mim_jax.parallel.sharding import logical_rules, make_mesh
from mim_jax.train import checkpoints
from mim_jax.train.runs import load_run
from mim_jax.train.step import step_key

pytestmark = pytest.mark.fake_devices  # meshes over the 8 fake CPU devices


def mesh_and_rules(shape, devices):
    cfg = ml_collections.ConfigDict(dict(shape=shape, rules=tiny_pretrain_config("").mesh.rules))
    return make_mesh(cfg, devices), logical_rules(cfg)


@pytest.fixture(scope="module")
def tiny_model():
    config = tiny_pretrain_config("")
    model = build_mae(config)
    images = np.zeros((1, 32, 32, 3), np.float32)
    params = jax.jit(model.init)(jax.random.key(0), images, np.zeros((1, mae.num_patches(model)), np.float32))["params"]
    return model, jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "names"))


@pytest.mark.slow
def test_validation_loss_is_the_mae_loss_with_fixed_masks_on_any_mesh(tiny_dataset, tiny_model):
    model, params = tiny_model
    mesh1, rules = mesh_and_rules((1, 1, 1), jax.devices()[:1])
    one = validation_loss(model, params, tiny_dataset, "val", norm_pix_loss=True, seed=5, batch_size=40, mesh=mesh1,
                          rules=rules)
    # Reference: the train step's loss function on the same eval images with noise fold_in(key(5), batch 0).
    batch = next(pipeline.eval_batches(tiny_dataset, "val", batch_size=40, image_size=32))
    sampled = mae.sample_noise(model, None, step_key(5, 0), 40)
    ref, _ = mae.make_loss(model, tiny_pretrain_config(""))(params, {"image": batch["image"], **sampled}, None)
    assert one["loss"] == pytest.approx(float(ref), rel=1e-5)
    assert one["num_examples"] == 40
    mesh8, rules = mesh_and_rules((8, 1, 1), jax.devices())
    eight = validation_loss(model, params, tiny_dataset, "val", norm_pix_loss=True, seed=5, batch_size=40,
                            mesh=mesh8, rules=rules)
    assert eight["loss"] == pytest.approx(one["loss"], rel=1e-5)
    # Padded batches (40 = 16 + 16 + 8 real rows): padding rows do not count.
    padded = validation_loss(model, params, tiny_dataset, "val", norm_pix_loss=True, seed=5, batch_size=16,
                             mesh=mesh8, rules=rules)
    assert padded["num_examples"] == 40 and 0.2 < padded["loss"] / one["loss"] < 5


def unlabelled_dataset(path):
    """A dataset whose records carry label -1 (no labels), e.g. scraped images."""
    examples = [synthetic.make_example(0, "train", i, 36)[:1] + (-1, f"u{i}") for i in range(16)]
    splits = {s: records.write_split(str(path), s, examples, num_shards=1) for s in ("train", "val")}
    records.write_metadata(str(path), ["unlabelled"], splits, {"source": "test"})
    return str(path)


@pytest.mark.slow
def test_dataset_without_labels_is_a_clear_error(tmp_path, tiny_model):
    model, params = tiny_model
    mesh, rules = mesh_and_rules((8, 1, 1), jax.devices())
    ctx = EvalContext(model, params, unlabelled_dataset(tmp_path / "unlabelled"), "train", "val", mesh, rules, 0)
    with pytest.raises(ConfigError, match=r"split 'train' has no usable labels \(16 of 16 records outside \[0, 1\)"):
        ctx.features("train", "cls", 8, None)


@pytest.mark.slow
def test_checkpoint_without_encoder_is_a_clear_error(tmp_path, tiny_dataset):
    run_dir = tmp_path / "run"
    os.makedirs(run_dir)
    (run_dir / "config.json").write_text(tiny_pretrain_config(tiny_dataset).to_json())
    with checkpoints.checkpoint_manager(str(run_dir), 1, async_save=False) as manager:
        checkpoints.save(manager, 7, {"params": {"decoder": {"w": np.ones(3, np.float32)}}, "step": np.int32(7)},
                         {"step": 7})
    mesh, rules = mesh_and_rules((8, 1, 1), jax.devices())
    with pytest.raises(ConfigError, match=r"checkpoint step 7 has no encoder parameters \(params holds \['decoder'\]\)"):
        load_run(str(run_dir), mesh, rules)


@pytest.mark.parametrize("field,value,message", [
    ("knn.k", 0, "evals.knn.k=0: must be a positive integer"),
    ("knn.type", "bogus", "evals.knn.type='bogus': use one of"),
    ("fewshot.shots", (5, 0), "evals.fewshot.shots=(5, 0): use positive shot counts"),
    ("val_loss.every_steps", -1, "evals.val_loss.every_steps=-1"),
    ("linear_probe.pool", "max", "evals.linear_probe.pool='max'"),
])
def test_bad_eval_fields_name_the_field(field, value, message):
    config = tiny_pretrain_config("/data")
    name, key = field.split(".")
    config.evals[name][key] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        registry.validate(config)


def test_finetune_recipe_fields_are_validated():
    e = defaults.finetune_config("L/16")
    assert (e.base_lr, e.layer_decay, e.drop_path, e.epochs) == (1e-3, 0.75, 0.1, 50)
    e.layer_decay = 1.5
    with pytest.raises(ConfigError, match=r"eval.layer_decay=1.5: must lie in \(0, 1\]"):
        validation.validate_eval(e, "eval")
