"""The teacher of `config.teacher`: its architecture (from the weights' file) and its weights, sharded.

teacher.weights may be a mim_jax-format file (`python -m mim_jax.convert`), any checkpoint the converters
read (OpenAI/open_clip CLIP .pt state dicts, HF CLIP/ViT directories or safetensors, DINO/MAE/MAWS .pth),
or, for teacher.type=mae_run, the workdir of an earlier pretraining run of this project.
"""
from __future__ import annotations

from typing import Any, Callable

import jax

from mim_jax.config.run_config import read_run_config
from mim_jax.convert import native
from mim_jax.convert.checkpoint_files import read_checkpoint
from mim_jax.convert.layouts import import_vit
from mim_jax.models.teachers import (
    DEFAULT_ARCHS,
    ViTArch,
    encoder_arch,
    params_at_grid,
    place_teacher_params,
)

MAE_B16 = ViTArch(768, 12, 12, 3072, 16, 14)
_HOST_CACHE: dict = {}  # (path, heads) -> (arch, host params): read once for the arch, reused for the weights


def _read_weights(path: str, heads: int) -> tuple[ViTArch, dict]:
    key = (path, heads)
    if key not in _HOST_CACHE:
        if native.is_native(path):
            arch, params = native.load_native(path)
            _HOST_CACHE[key] = (arch, params["encoder"])
        else:
            sd, hf_config = read_checkpoint(path)
            _HOST_CACHE[key] = import_vit(sd, hf_config, heads)
    return _HOST_CACHE[key]


def teacher_arch(teacher_cfg) -> ViTArch:
    """Architecture of the configured teacher at its native grid (B/16 defaults when no weights are set)."""
    if teacher_cfg.type == "mae_run":
        if not teacher_cfg.weights:
            return MAE_B16
        return encoder_arch(read_run_config(teacher_cfg.weights).model)
    if not teacher_cfg.weights:
        return DEFAULT_ARCHS[teacher_cfg.type]
    return _read_weights(teacher_cfg.weights, teacher_cfg.heads)[0]


def load_teacher_params(teacher_cfg, teacher, mesh, rules, read_run: Callable) -> Any:
    """The teacher's weights as global arrays in `teacher.shardings` and teacher.dtype (positions on its grid).

    `teacher` is the objective's Frozen (module, abstract params, shardings); `read_run(path, mesh, rules)`
    returns an earlier run's params (teacher.type=mae_run).
    """
    if teacher_cfg.type == "mae_run":
        params = read_run(teacher_cfg.weights, mesh, rules)
        dtype = teacher.module.dtype
        encoder = _select(params["encoder"], teacher.abstract_params)
        return jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype), p), out_shardings=teacher.shardings)(encoder)
    arch, host = _read_weights(teacher_cfg.weights, teacher_cfg.heads)
    host = params_at_grid(host, arch, teacher.module.arch.grid_size)
    _HOST_CACHE.pop((teacher_cfg.weights, teacher_cfg.heads), None)
    return place_teacher_params(_select(host, teacher.abstract_params), teacher.abstract_params)


def _select(params: dict, abstract: dict) -> dict:
    """Drop the top-level entries the teacher does not use (final norm / projection for feature=last_block)."""
    return {k: v for k, v in params.items() if k in abstract}
