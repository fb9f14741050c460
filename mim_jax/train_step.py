"""Sharded train state and the jitted MAE train step (the same program runs on 1 CPU or a pod)."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from mim_jax import optim
from mim_jax.objectives import targets as objectives
from mim_jax.nonfinite import skip_metrics
from mim_jax.data.transforms import normalize
from mim_jax.models.mae import MAE, mae_from_config
from mim_jax.models.vit import check_attention_platform
from mim_jax.models.teachers import TeacherViT, ViTArch, abstract_teacher, teacher_inputs
from mim_jax.sharding import batch_sharding, check_batch_layout, check_divisible, check_replication, \
    logical_rules, replicated, state_shardings

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


def abstract_train_state(model: MAE, tx: optax.GradientTransformation, mesh, rules):
    """(ShapeDtypeStructs with shardings of the unboxed state, shardings); allocates nothing."""
    init = functools.partial(_init_state, model, tx)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)  # abstract: the mesh may be compile-only devices
    with sharding_context(mesh, rules):
        abstract, shardings = state_shardings(init, mesh, rules, rng)
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


@dataclasses.dataclass
class Teacher:
    """A frozen teacher of the step: module, the pixels it sees per side, abstract params and their shardings.

    Its params are not in the TrainState: they enter the jitted step as a separate, non-donated argument.
    """
    module: TeacherViT
    image_size: int
    abstract_params: Any
    shardings: Any

    @property
    def arch(self) -> ViTArch:
        """The teacher's architecture (at the student's patch grid)."""
        return self.module.arch


def teacher_loss_fn(model: MAE, teacher: Teacher) -> Callable:
    """loss(params, images_uint8, noise, teacher_params) -> Lu et al. Eq. 1 on all 1+N tokens (fp32)."""
    def loss_fn(params, images, noise, teacher_params):
        outputs = model.apply({"params": params}, normalize(images), noise)
        inputs = teacher_inputs(images, teacher.arch, teacher.image_size)
        features = teacher.module.apply({"params": jax.lax.stop_gradient(teacher_params)}, inputs)
        return objectives.teacher_feature_loss(outputs["pred_with_cls"], features)
    return loss_fn


def split_micro_batches(x: jax.Array, micro_batches: int) -> jax.Array:
    """[B, ...] -> [A, B/A, ...] with micro-batch a = rows a, a+A, a+2A, ...; each stays split over devices.

    A strided split keeps every micro-batch spread over all data-parallel devices (a contiguous split
    would put micro-batch a on 1/A of them).
    """
    b = x.shape[0]
    x = x.reshape((b // micro_batches, micro_batches) + x.shape[1:]).swapaxes(0, 1)
    return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))


def accumulated_value_and_grad(loss_fn: Callable, params, images: jax.Array, noise: jax.Array,
                               micro_batches: int, param_shardings: Any):
    """Mean loss and gradient over `micro_batches` equal micro-batches, summed in fp32 inside a scan.

    Every micro-batch loss is a mean over the same number of masked patches, so the mean of the
    micro-batch losses (and gradients) equals the full-batch loss (and gradient).
    """
    if micro_batches == 1:
        return jax.value_and_grad(loss_fn)(params, images, noise)

    def body(carry, xs):
        loss_sum, grad_sum = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *xs)
        grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
        return (loss_sum + loss, jax.lax.with_sharding_constraint(grad_sum, param_shardings)), None

    zeros = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, params), param_shardings)
    xs = (split_micro_batches(images, micro_batches), split_micro_batches(noise, micro_batches))
    (loss_sum, grad_sum), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), xs)
    return loss_sum / micro_batches, jax.tree.map(lambda g: g / micro_batches, grad_sum)


def batch_shardings(mesh, rules) -> dict:
    """Shardings of the train batch dict (uint8 images [B, H, W, 3], labels [B])."""
    return {"image": batch_sharding(mesh, rules, 4), "label": batch_sharding(mesh, rules, 1)}


def make_train_step(model: MAE, schedule: optax.Schedule, seed: int, norm_pix_loss: bool, mesh, rules,
                    shardings: Any, global_batch_size: int, micro_batches: int = 1,
                    teacher: Teacher | None = None) -> Callable:
    """jit(step)(state, batch[, teacher_params]) -> (state, metrics); explicit shardings, donated state.

    With `micro_batches` > 1 the gradient is accumulated over that many micro-batches inside the step.
    With a `teacher`, the loss is Lu et al. Eq. 1 against its features; its params are the third
    argument (sharded by `teacher.shardings`, not donated, never differentiated or updated).
    """
    pixel_loss = mae_loss_fn(model, norm_pix_loss)
    feature_loss = teacher_loss_fn(model, teacher) if teacher is not None else None

    def step(state: TrainState, batch: dict, *teacher_params):
        loss_fn = pixel_loss if teacher is None else \
            functools.partial(feature_loss, teacher_params=teacher_params[0])
        noise = mask_noise(seed, state.step, (global_batch_size, num_patches(model)))
        loss, grads = accumulated_value_and_grad(loss_fn, state.params, batch["image"], noise, micro_batches,
                                                 shardings.params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step)}
        state = state.apply_gradients(grads=grads)
        return state, {**metrics, **skip_metrics(state.opt_state)}

    in_shardings = (shardings, batch_shardings(mesh, rules)) + (() if teacher is None else (teacher.shardings,))
    jitted = jax.jit(step, in_shardings=in_shardings, out_shardings=(shardings, replicated(mesh)),
                     donate_argnums=0)

    def run(state, batch, *teacher_params):
        with sharding_context(mesh, rules):
            return jitted(state, batch, *teacher_params)
    run.jitted = jitted  # for ahead-of-time lowering (e.g. a memory plan)
    return run


@dataclasses.dataclass
class Program:
    """Everything one pretraining run compiles: model, optimizer, sharded abstract state and the step."""
    model: MAE
    tx: optax.GradientTransformation
    mesh: Any
    rules: tuple
    abstract_state: Any     # ShapeDtypeStructs carrying their shardings; nothing allocated
    shardings: Any
    step: Callable          # step(state, batch[, teacher_params]) -> (state, metrics); step.jitted for .lower()
    replicated_fraction: float
    teacher: Teacher | None = None  # objective 'mae_teacher': the frozen teacher (params passed to step)

    def abstract_batch(self, global_batch_size: int, image_size: int) -> dict:
        """ShapeDtypeStructs of one global train batch with their shardings (for ahead-of-time lowering)."""
        shardings = batch_shardings(self.mesh, self.rules)
        return {"image": jax.ShapeDtypeStruct((global_batch_size, image_size, image_size, 3), jnp.uint8,
                                              sharding=shardings["image"]),
                "label": jax.ShapeDtypeStruct((global_batch_size,), jnp.int32, sharding=shardings["label"])}

    def lower(self, global_batch_size: int, image_size: int):
        """Lower the jitted train step for abstract state and batch (no device memory is touched)."""
        teacher = () if self.teacher is None else (self.teacher.abstract_params,)
        with sharding_context(self.mesh, self.rules):
            return self.step.jitted.lower(self.abstract_state, self.abstract_batch(global_batch_size, image_size),
                                          *teacher)

    def train_flops_per_step(self, config) -> float:
        """Model FLOPs of one step of `config` (MaxText convention), the frozen teacher's forward counted once."""
        from mim_jax import flops
        if self.teacher is None:
            return flops.train_flops_per_step(config.model, config.data.global_batch_size)
        return flops.train_flops_per_step(config.model, config.data.global_batch_size,
                                          flops.teacher_forward_flops_per_example(self.teacher.arch,
                                                                                  self.teacher.module.feature),
                                          out_dim=self.model.decoder.out_dim)


def build_program(config, mesh, process_count: int = 1) -> Program:
    """The sharded train program of `config` on `mesh`; checks batch layout, divisibility and replication."""
    rules = logical_rules(config.mesh)
    batch, total, micro = config.data.global_batch_size, config.total_steps, config.optim.grad_accum_steps
    check_batch_layout(batch, micro, mesh, rules, process_count)
    check_attention_platform(config.model.get("attention", "xla"), mesh.devices.flat[0].platform)
    teacher = build_teacher(config, mesh, rules) if config.objective == "mae_teacher" else None
    model = mae_from_config(config.model, teacher.arch.feature_dim(config.teacher.feature) if teacher else 0)
    schedule = optim.learning_rate_schedule(config.optim, batch, total)
    tx = optim.make_optimizer(config.optim, batch, total)
    abstract, shardings = abstract_train_state(model, tx, mesh, rules)
    check_divisible(abstract.params, shardings.params, mesh)
    fraction = check_replication(abstract.params, shardings.params, mesh, config.mesh.max_replicated_fraction)
    step = make_train_step(model, schedule, config.seed, config.model.norm_pix_loss, mesh, rules, shardings,
                           batch, micro, teacher)
    return Program(model, tx, mesh, rules, abstract, shardings, step, fraction, teacher)


def build_teacher(config, mesh, rules) -> Teacher:
    """The frozen teacher of `config.teacher` on the student's patch grid, abstract params sharded on `mesh`."""
    from mim_jax.convert.teacher_weights import teacher_arch
    grid = config.model.image_size // model_patch_size(config.model)
    arch = teacher_arch(config.teacher).at_grid(grid)
    module = TeacherViT(arch, config.teacher.feature, jnp.dtype(config.teacher.dtype))
    abstract, shardings = abstract_teacher(module, mesh, rules)
    check_divisible(abstract, shardings, mesh)
    return Teacher(module, grid * arch.patch_size, abstract, shardings)


def model_patch_size(model_cfg) -> int:
    """The student's patch size (size table or override)."""
    from mim_jax.models.vit import resolve_dims
    return resolve_dims(model_cfg)["patch_size"]
