"""objective_loss: the objective's own loss on val batches equals the train step's loss on the same batch."""
import jax
import numpy as np
import pytest

from conftest import tiny_pretrain_config
from mim_jax.config import validation
from mim_jax.data import pipeline
from mim_jax.errors import ConfigError
from mim_jax.evaluate.evaluators import EvalContext, run_evaluator
from mim_jax.evaluate.objective_loss import objective_val_loss
from mim_jax.objectives import registry
from mim_jax.parallel.sharding import global_batch, make_mesh
from mim_jax.train.program import build_program
from mim_jax.train.step import step_key

pytestmark = pytest.mark.fake_devices


def one_device_config(dataset, objective):
    c = tiny_pretrain_config(dataset, objective=objective)
    c.mesh.shape = (1, 1, 1)
    return c


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mae", "simmim"])
def test_objective_loss_is_the_train_step_loss_on_the_same_batch(tiny_dataset, objective):
    config = one_device_config(tiny_dataset, objective)
    mesh = make_mesh(config.mesh, jax.devices()[:1])
    program = build_program(config, mesh)
    state, _ = program.init_state(config.seed)
    params = jax.device_get(state.params)
    result = objective_val_loss(program.model, state.params, config, tiny_dataset, "val", seed=config.seed,
                                batch_size=16, mesh=mesh, rules=program.rules)
    assert result["num_examples"] == 32 and result["num_batches"] == 2  # 40 val records: 2 full batches
    assert result["loss"] == pytest.approx(np.mean(result["batch_losses"]), rel=1e-6)
    # Reference 1: the train step at step j on val batch j reports the loss before its update; its masks come
    # from fold_in(key(seed), j), the evaluator's for batch j.
    obj = registry.get(objective)
    loss_fn = obj.make_loss(program.model, config, None)
    for j, local in enumerate(pipeline.eval_batches(tiny_dataset, "val", batch_size=16, image_size=32,
                                                    max_examples=32)):
        batch = {"image": local["image"], "label": local["label"]}
        fresh = state.replace(step=np.int32(j))
        _, metrics = program.step(jax.tree.map(lambda x: x.copy(), fresh), global_batch(batch, mesh, program.rules))
        assert result["batch_losses"][j] == pytest.approx(float(metrics["loss"]), rel=1e-5)
        # Reference 2: the objective's loss function called directly on the host batch.
        sampled = obj.sample(program.model, config, step_key(config.seed, j), 16)
        direct, _ = loss_fn(params, {**batch, **sampled}, None)
        assert result["batch_losses"][j] == pytest.approx(float(direct), rel=1e-5)
    # The same seed gives the same number for the same params (a fixed sample, checkpoint after checkpoint).
    again = objective_val_loss(program.model, state.params, config, tiny_dataset, "val", seed=config.seed,
                               batch_size=16, mesh=mesh, rules=program.rules)
    assert again["loss"] == result["loss"]
    other = objective_val_loss(program.model, state.params, config, tiny_dataset, "val", seed=config.seed + 1,
                               batch_size=16, mesh=mesh, rules=program.rules)
    assert other["loss"] != result["loss"]


def test_objective_loss_applies_to_every_objective_and_needs_a_run():
    for name in registry.OBJECTIVES:
        config = tiny_pretrain_config("/nonexistent", objective="mae" if name == "mae_teacher" else name)
        config.objective = name
        config.evals.objective_loss.at_end = True
        try:
            registry.validate(config, check_data_path=False)
        except ConfigError as err:  # other fields of the objective (teacher weights) may be missing, not this one
            assert "objective_loss" not in str(err), err
    ctx = EvalContext(None, {"encoder": {}}, "", "train", "val", None, (), 0)
    e = tiny_pretrain_config("").evals.objective_loss
    with pytest.raises(ConfigError, match="objective_loss needs a pretraining run"):
        run_evaluator(ctx, e)
    e.batch_size = 0
    with pytest.raises(ConfigError, match="evals.objective_loss.batch_size"):
        validation.validate_eval(e, "evals.objective_loss")
