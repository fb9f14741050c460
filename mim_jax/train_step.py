"""Sharded train state and the jitted MAE train step (the same program runs on 1 CPU or a pod)."""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from mim_jax import objectives
from mim_jax.data.transforms import normalize
from mim_jax.models.mae import MAE
from mim_jax.sharding import batch_sharding, replicated, state_shardings

TrainState = train_state.TrainState


def sharding_context(mesh, rules) -> contextlib.ExitStack:
    """Mesh + logical-axis rules in scope, needed while tracing models with logical constraints."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(rules))
    return stack


def dummy_images(model: MAE, batch: int = 1) -> jax.ShapeDtypeStruct:
    """Abstract uint8 image batch of the model's input size."""
    size = model.encoder.image_size
    return jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)


def num_patches(model: MAE) -> int:
    """Tokens per image (without CLS)."""
    return model.encoder.grid_size ** 2


def _init_state(model: MAE, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    images = jnp.zeros(dummy_images(model).shape, jnp.float32)
    noise = jnp.zeros((1, num_patches(model)), jnp.float32)
    params = model.init({"params": rng}, images, noise)["params"]
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def create_train_state(model: MAE, tx: optax.GradientTransformation, mesh, rules, seed: int):
    """State built by a jitted init straight into its shardings (never on the host) -> (state, shardings)."""
    init = functools.partial(_init_state, model, tx)
    rng = jax.random.key(seed)
    with sharding_context(mesh, rules):
        _, shardings = state_shardings(init, mesh, rules, rng)
        state = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
    # Finish init before the first step is queued: two collective programs in flight at once can
    # dead-lock fake CPU devices (see DEPS.md), and on accelerators the wait is a one-off.
    return jax.block_until_ready(state), shardings


def abstract_train_state(model: MAE, tx: optax.GradientTransformation, mesh, rules, seed: int = 0):
    """(ShapeDtypeStructs with shardings of the unboxed state, shardings); allocates nothing."""
    init = functools.partial(_init_state, model, tx)
    with sharding_context(mesh, rules):
        abstract, shardings = state_shardings(init, mesh, rules, jax.random.key(seed))
    abstract = nn.unbox(abstract)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings), \
        shardings


def mask_noise(seed: int, step: jax.Array, shape: tuple) -> jax.Array:
    """Uniform masking noise for global step `step`: depends only on (seed, step), not on the mesh."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    return jax.random.uniform(key, shape, jnp.float32)


def mae_loss_fn(model: MAE, norm_pix_loss: bool) -> Callable:
    """loss(params, images_uint8, noise) -> scalar fp32 MAE loss."""
    def loss_fn(params, images, noise):
        x = normalize(images)
        outputs = model.apply({"params": params}, x, noise)
        return objectives.mae_pixel_loss(outputs, x, model.encoder.patch_size, norm_pix_loss)
    return loss_fn


def make_train_step(model: MAE, schedule: optax.Schedule, seed: int, norm_pix_loss: bool, mesh, rules,
                    shardings: Any, global_batch_size: int) -> Callable:
    """jit(step)(state, batch) -> (state, metrics) with explicit in/out shardings and a donated state."""
    loss_fn = mae_loss_fn(model, norm_pix_loss)

    def step(state: TrainState, batch: dict):
        noise = mask_noise(seed, state.step, (global_batch_size, num_patches(model)))
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch["image"], noise)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        return state.apply_gradients(grads=grads), metrics

    batch_shardings = {"image": batch_sharding(mesh, rules, 4), "label": batch_sharding(mesh, rules, 1)}
    jitted = jax.jit(step, in_shardings=(shardings, batch_shardings), out_shardings=(shardings, replicated(mesh)),
                     donate_argnums=0)

    def run(state, batch):
        with sharding_context(mesh, rules):
            return jitted(state, batch)
    run.jitted = jitted  # for ahead-of-time lowering (e.g. a memory plan)
    return run
