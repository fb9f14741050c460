"""MAE whose decoder predicts a frozen teacher's features (Lu et al. 2023, Eq. 1): CLIP, DINO or an earlier run.

Loss: mean over all 1+N tokens (and the batch) of the squared distance of the l2-normalized prediction and the
l2-normalized teacher feature. The teacher sees the student's patch grid (its positions resized) and is frozen:
its params enter the step as a separate, non-donated argument and get no optimizer state.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from mim_jax import workdir as run_dirs
from mim_jax.config.validation import DTYPES, require
from mim_jax.convert.teacher_weights import load_teacher_params, teacher_arch
from mim_jax.data.transforms import normalize
from mim_jax.models import flops
from mim_jax.models.teachers import (
    FEATURES,
    TeacherViT,
    abstract_teacher,
    teacher_inputs,
)
from mim_jax.models.vit import resolve_dims
from mim_jax.objectives import mae
from mim_jax.objectives.base import ENCODER_EVALUATORS, Frozen, Objective
from mim_jax.objectives.targets import teacher_feature_loss
from mim_jax.parallel.sharding import check_divisible

TEACHER_TYPES = ("clip", "dino", "mae_run")


def config_block() -> ml_collections.ConfigDict:
    """Frozen-teacher fields, used by objective='mae_teacher' (Lu et al. feature targets)."""
    t = ml_collections.ConfigDict()
    t.type = "clip"                   # clip | dino | mae_run (the encoder of an earlier run of this project)
    t.weights = ""                    # checkpoint file/dir (see docs/weights.md), or a run workdir
    t.feature = "final"               # final (after ln_post [+ CLIP projection]) | last_block (before the norm)
    t.dtype = "bfloat16"              # teacher params and forward; float32 for exact checks
    t.heads = 0                       # 0 = infer (file config or size table by width); needed for odd widths
    return t

def student_grid(config) -> int:
    """Patches per side of the student (the teacher runs on the same grid)."""
    return config.model.image_size // resolve_dims(config.model)["patch_size"]


def build_model(config, unroll: bool = False):
    """The MAE of config.mae whose decoder predicts the teacher's feature width."""
    return mae.build_mae(config, teacher_arch(config.teacher).feature_dim(config.teacher.feature), unroll=unroll)


def frozen_teacher(config, mesh, rules, unroll: bool = False) -> Frozen:
    """The frozen teacher of config.teacher on the student's patch grid, abstract params sharded on `mesh`."""
    grid = student_grid(config)
    arch = teacher_arch(config.teacher).at_grid(grid)
    module = TeacherViT(arch, config.teacher.feature, jnp.dtype(config.teacher.dtype),
                        scan_unroll=arch.depth if unroll else 1)
    abstract, shardings = abstract_teacher(module, mesh, rules)
    check_divisible(abstract, shardings, mesh)
    return Frozen(module, abstract, shardings, loader=load_frozen_teacher,
                  info={"arch": arch, "image_size": grid * arch.patch_size})


def load_frozen_teacher(frozen: Frozen, config, mesh, rules, read_run):
    """The teacher's weights (config.teacher.weights) placed as `frozen` says."""
    return load_teacher_params(config.teacher, frozen, mesh, rules, read_run)


def make_loss(model, config, frozen: Frozen):
    """loss(params, batch, rng, teacher_params) -> (Lu et al. Eq. 1 on all 1+N tokens, {}) in fp32."""
    arch, image_size = frozen.info["arch"], frozen.info["image_size"]

    def loss(params, batch, rng, teacher_params):
        outputs = model.apply({"params": params}, normalize(batch["image"]), batch["noise"],
                              **mae.apply_kwargs(config, rng))
        inputs = teacher_inputs(batch["image"], arch, image_size)
        features = frozen.module.apply({"params": jax.lax.stop_gradient(teacher_params)}, inputs)
        return teacher_feature_loss(outputs["pred_with_cls"], features), {}
    return loss


def flops_per_example(config) -> float:
    """3x the MAE forward (decoder out = teacher feature width) + the frozen teacher's forward (x1)."""
    arch = teacher_arch(config.teacher).at_grid(student_grid(config))
    out_dim = arch.feature_dim(config.teacher.feature)
    return 3.0 * sum(mae.forward_flops_breakdown(config, out_dim).values()) + \
        flops.teacher_forward_flops_per_example(arch, config.teacher.feature)


def validate_teacher(teacher, check_weights: bool = True) -> None:
    """Check the teacher fields; `check_weights=False` (memory plans) allows no weights (B/16 shapes)."""
    require(teacher.type in TEACHER_TYPES, "teacher.type", teacher.type, f"use one of {TEACHER_TYPES}")
    require(teacher.feature in FEATURES, "teacher.feature", teacher.feature,
             f"use one of {FEATURES}")
    require(teacher.dtype in DTYPES, "teacher.dtype", teacher.dtype, f"use one of {DTYPES}")
    require(isinstance(teacher.heads, int) and teacher.heads >= 0, "teacher.heads", teacher.heads,
             "use 0 (infer) or a positive integer")
    require(not check_weights or bool(teacher.weights) or teacher.type != "mae_run", "teacher.weights",
             teacher.weights, "set --config.teacher.weights=WORKDIR of an earlier pretraining run")
    require(not check_weights or bool(teacher.weights), "teacher.weights", teacher.weights,
             f"set --config.teacher.weights=PATH to the {teacher.type} checkpoint (.pt/.pth/.safetensors/HF dir)")
    require(not teacher.weights or run_dirs.exists(run_dirs.resolve(teacher.weights)), "teacher.weights",
             teacher.weights, "no such file or directory; check the path")

def validate(config, check_paths: bool = True) -> None:
    """config.mae and config.teacher (recon_loss is refused by the registry: it is not in `evaluators`)."""
    mae.validate_block(config)
    validate_teacher(config.teacher, check_paths)


OBJECTIVE = Objective(
    name="mae_teacher", build_model=build_model, init_inputs=mae.init_inputs, sample=mae.sample_noise,
    make_loss=make_loss, flops_per_example=flops_per_example, validate=validate,
    config_blocks={"mae": mae.config_block, "teacher": config_block}, evaluators=ENCODER_EVALUATORS,
    signature=mae.signature, frozen=frozen_teacher,
    description="MAE predicting a frozen teacher's l2-normalized features (Lu et al. 2023)")
