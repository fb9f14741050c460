"""The jitted train step, generic over objectives: per-step randomness, gradient accumulation, the update.

The same program runs on 1 CPU or a pod: explicit in/out shardings, a donated state, frozen inputs (a teacher)
as a separate non-donated argument. Step randomness comes from `fold_in(key(seed), step)` over the global
batch shape, so the loss of a given (seed, step) is the same on any mesh.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mim_jax.objectives.base import Objective
from mim_jax.parallel.sharding import batch_sharding, replicated, sharding_context
from mim_jax.train.nonfinite import skip_metrics
from mim_jax.train.state import TrainState

DROPOUT_STREAM = 1  # fold_in(step key, DROPOUT_STREAM) seeds drop path; the step key itself draws the masks


def step_key(seed: int, step: jax.Array) -> jax.Array:
    """The key of global step `step`: depends only on (seed, step), never on the mesh."""
    return jax.random.fold_in(jax.random.key(seed), step)


def split_micro_batches(x: jax.Array, micro_batches: int) -> jax.Array:
    """[B, ...] -> [A, B/A, ...] with micro-batch a = rows a, a+A, a+2A, ...; each stays split over devices.

    A strided split keeps every micro-batch spread over all data-parallel devices (a contiguous split
    would put micro-batch a on 1/A of them).
    """
    b = x.shape[0]
    x = x.reshape((b // micro_batches, micro_batches) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))


def accumulated_value_and_grad(loss_fn: Callable, params, batch: dict, rng: jax.Array, frozen: tuple,
                               micro_batches: int, param_shardings: Any):
    """((mean loss, mean metrics), mean gradient) over `micro_batches` equal micro-batches, summed in fp32.

    Every micro-batch takes its rows of the batch pytree (images and sampled masks alike) and its own rng
    (`fold_in(rng, a)`); each micro-batch loss is a mean over the same number of masked tokens, so the mean of
    the micro-batch losses (and gradients) equals the full-batch loss (and gradient).
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        return grad_fn(params, batch, rng, *frozen)

    def body(carry, xs):
        index, micro = xs
        (loss, metrics), grads = grad_fn(params, micro, jax.random.fold_in(rng, index), *frozen)
        sums = jax.tree.map(jnp.add, carry, ((loss, metrics), grads))
        return (sums[0], jax.lax.with_sharding_constraint(sums[1], param_shardings)), None

    micro = jax.tree.map(lambda x: split_micro_batches(x, micro_batches), batch)
    first = jax.tree.map(lambda x: x[0], micro)
    aux_shapes = jax.eval_shape(lambda: loss_fn(params, first, rng, *frozen))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), aux_shapes)
    grad_zeros = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, params), param_shardings)
    sums, _ = jax.lax.scan(body, (zeros, grad_zeros), (jnp.arange(micro_batches), micro))
    return jax.tree.map(lambda x: x / micro_batches, sums)


def batch_shardings(mesh, rules, max_labels: int = 0) -> dict:
    """Shardings of the train batch dict (uint8 images [B, H, W, 3], labels [B], label sets [B, max_labels] if > 0)."""
    out = {"image": batch_sharding(mesh, rules, 4), "label": batch_sharding(mesh, rules, 1)}
    if max_labels > 0:
        out["labels"] = batch_sharding(mesh, rules, 2)
    return out


def make_train_step(objective: Objective, model: nn.Module, config, schedule: optax.Schedule, mesh, rules,
                    shardings: Any, frozen=None) -> Callable:
    """jit(step)(state, batch[, frozen_params]) -> (state, metrics); explicit shardings, donated state.

    With optim.grad_accum_steps > 1 the gradient is accumulated over that many micro-batches inside the step.
    With `frozen` (the objective's Frozen), its params are the third argument (sharded by `frozen.shardings`,
    not donated, never differentiated or updated).
    """
    loss_fn = objective.make_loss(model, config, frozen)
    seed, global_batch_size = config.seed, config.data.global_batch_size
    micro_batches = config.optim.grad_accum_steps

    def step(state: TrainState, batch: dict, *frozen_params):
        key = step_key(seed, state.step)
        batch = {**batch, **objective.sample(model, config, key, global_batch_size)}
        (loss, aux), grads = accumulated_value_and_grad(loss_fn, state.params, batch,
                                                        jax.random.fold_in(key, DROPOUT_STREAM), frozen_params,
                                                        micro_batches, shardings.params)
        metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        state = state.apply_gradients(grads=grads)
        return state, {**metrics, **skip_metrics(state.opt_state)}

    frozen_shardings = () if frozen is None else (frozen.shardings,)
    batch_in = batch_shardings(mesh, rules, config.data.get("max_labels", 0))
    jitted = jax.jit(step, in_shardings=(shardings, batch_in) + frozen_shardings,
                     out_shardings=(shardings, replicated(mesh)), donate_argnums=0)

    def run(state, batch, *frozen_params):
        with sharding_context(mesh, rules):
            return jitted(state, batch, *frozen_params)
    run.jitted = jitted  # for ahead-of-time lowering (e.g. a memory plan)
    return run
