"""The train state, built abstractly first (shapes and shardings) and then by a jitted init into its shardings."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import optax
from flax.training import train_state

from mim_jax.parallel.sharding import sharding_context, state_shardings

TrainState = train_state.TrainState


def _init_state(model: nn.Module, inputs: tuple, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    params = model.init({"params": rng}, *inputs)["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def create_train_state(model: nn.Module, inputs: tuple, tx: optax.GradientTransformation, mesh, rules, seed: int):
    """State built by a jitted init straight into its shardings (never on the host) -> (state, shardings).

    `inputs` are the model's example inputs for init (the objective's `init_inputs`).
    """
    init = functools.partial(_init_state, model, inputs, tx)
    rng = jax.random.key(seed)
    with sharding_context(mesh, rules):
        _, shardings = state_shardings(init, mesh, rules, rng)
        state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
    # Finish init before the first step is queued: two collective programs in flight at once can
    # starve fake CPU devices of threads (docs/testing.md), and on accelerators the wait is a one-off.
    return jax.block_until_ready(state), shardings


def abstract_train_state(model: nn.Module, inputs: tuple, tx: optax.GradientTransformation, mesh, rules):
    """(ShapeDtypeStructs with shardings of the unboxed state, shardings); allocates nothing."""
    init = functools.partial(_init_state, model, inputs, tx)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)  # abstract: the mesh may be compile-only devices
    with sharding_context(mesh, rules):
        abstract, shardings = state_shardings(init, mesh, rules, rng)
    abstract = nn.unbox(abstract)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings), \
        shardings
