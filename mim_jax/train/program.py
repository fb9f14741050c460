"""Everything one pretraining run compiles, resolved from `config.objective` through the objective registry."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mim_jax.models.vit import check_attention_platform
from mim_jax.objectives import registry
from mim_jax.objectives.base import Frozen, Objective
from mim_jax.parallel.sharding import (
    check_batch_layout,
    check_divisible,
    check_replication,
    logical_rules,
    sharding_context,
)
from mim_jax.train import optim
from mim_jax.train.state import abstract_train_state, create_train_state
from mim_jax.train.step import batch_shardings, make_train_step

# Model fields that do not change parameter shapes (a checkpoint restores across them).
# family: variant names are unique across families; window sizes: SwinV2's params do not depend on them.
SHAPE_FREE_MODEL_FIELDS = ("dtype", "remat", "drop_path", "attention", "scan_unroll", "family", "window_size",
                           "pretrained_window_sizes")


@dataclasses.dataclass
class Program:
    """Model, optimizer, sharded abstract state and the step of one run; nothing allocated until `init_state`."""
    objective: Objective
    model: nn.Module
    tx: optax.GradientTransformation
    mesh: Any
    rules: tuple
    abstract_state: Any     # ShapeDtypeStructs carrying their shardings
    shardings: Any
    step: Callable          # step(state, batch[, frozen_params]) -> (state, metrics); step.jitted for .lower()
    replicated_fraction: float
    init_inputs: tuple      # the model's example inputs for init
    frozen: Frozen | None = None  # frozen inputs of the step (a teacher); their params are passed to `step`
    max_labels: int = 0     # > 0: batches carry label sets `labels` [B, max_labels] (config.data.max_labels)

    def init_state(self, seed: int):
        """(state, shardings) at the random init of `seed`, built straight into its shardings."""
        return create_train_state(self.model, self.init_inputs, self.tx, self.mesh, self.rules, seed)

    def abstract_batch(self, global_batch_size: int, image_size: int) -> dict:
        """ShapeDtypeStructs of one global train batch with their shardings (for ahead-of-time lowering)."""
        shardings = batch_shardings(self.mesh, self.rules, self.max_labels)
        batch = {"image": jax.ShapeDtypeStruct((global_batch_size, image_size, image_size, 3), jnp.uint8,
                                               sharding=shardings["image"]),
                 "label": jax.ShapeDtypeStruct((global_batch_size,), jnp.int32, sharding=shardings["label"])}
        if self.max_labels > 0:
            batch["labels"] = jax.ShapeDtypeStruct((global_batch_size, self.max_labels), jnp.int32,
                                                   sharding=shardings["labels"])
        return batch

    def lower(self, global_batch_size: int, image_size: int):
        """Lower the jitted train step for abstract state and batch (no device memory is touched)."""
        frozen = () if self.frozen is None else (self.frozen.abstract_params,)
        with sharding_context(self.mesh, self.rules):
            return self.step.jitted.lower(self.abstract_state, self.abstract_batch(global_batch_size, image_size),
                                          *frozen)


def train_flops_per_step(config) -> float:
    """Model FLOPs of one optimizer step over the global batch (MaxText convention, frozen parts x1)."""
    return config.data.global_batch_size * registry.get(config.objective).flops_per_example(config)


def model_signature(config) -> dict:
    """The config fields that fix parameter shapes; a checkpoint only restores into a matching model."""
    objective = registry.get(config.objective)
    model = {k: v for k, v in config.model.to_dict().items() if k not in SHAPE_FREE_MODEL_FIELDS}
    signature = {"objective": config.objective, "model": model, **objective.signature(config)}
    if config.optim.get("nonfinite", "stop") == "skip":  # apply_if_finite adds counters to the optimizer state
        signature["optim"] = {"nonfinite": "skip"}
    return signature


def build_model(config, unroll: bool = False) -> nn.Module:
    """The model `config.objective` trains (backbone + objective head)."""
    return registry.get(config.objective).build_model(config, unroll=unroll)


def build_program(config, mesh, process_count: int = 1) -> Program:
    """The sharded train program of `config` on `mesh`; checks batch layout, divisibility and replication."""
    objective = registry.get(config.objective)
    rules = logical_rules(config.mesh)
    batch, total, micro = config.data.global_batch_size, config.total_steps, config.optim.grad_accum_steps
    check_batch_layout(batch, micro, mesh, rules, process_count)
    check_attention_platform(config.model.get("attention", "xla"), mesh.devices.flat[0].platform)
    frozen = objective.frozen(config, mesh, rules) if objective.frozen else None
    model = objective.build_model(config)
    inputs = objective.init_inputs(model, config)
    schedule = optim.learning_rate_schedule(config.optim, batch, total)
    tx = optim.make_optimizer(config.optim, batch, total)
    abstract, shardings = abstract_train_state(model, inputs, tx, mesh, rules)
    check_divisible(abstract.params, shardings.params, mesh)
    fraction = check_replication(abstract.params, shardings.params, mesh, config.mesh.max_replicated_fraction)
    step = make_train_step(objective, model, config, schedule, mesh, rules, shardings, frozen)
    return Program(objective, model, tx, mesh, rules, abstract, shardings, step, fraction, inputs, frozen,
                   config.data.get("max_labels", 0))
