"""Convert weights between formats: any source `loading.load_any` reads, or a pretraining workdir, to mim_jax / timm."""
from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections

from mim_jax.config.run_config import read_run_config
from mim_jax.convert.export import export_timm
from mim_jax.convert.loading import load_any
from mim_jax.convert.native import save_native
from mim_jax.convert.wsp_heads import unpad_head
from mim_jax.errors import ConfigError
from mim_jax.models.teachers import encoder_arch
from mim_jax.parallel.sharding import logical_rules, make_mesh
from mim_jax.train.runs import load_run

FORMATS = ("mim_jax", "timm", "hf_swinv2")


def is_run_dir(path: str) -> bool:
    """Whether `path` is a pretraining workdir or one of its checkpoints/<step> directories."""
    run_dir = os.path.isdir(os.path.join(path, "checkpoints")) and os.path.isfile(os.path.join(path, "config.json"))
    return run_dir or os.path.basename(os.path.dirname(path.rstrip("/"))) == "checkpoints"


def load_run_weights(run: str):
    """(arch, None, {'encoder': ...}) of a pretraining run's latest (or given) checkpoint, on one CPU device."""
    run_cfg = read_run_config(run)
    mesh_cfg = ml_collections.ConfigDict(dict(shape=(1, 1, 1), rules=run_cfg.mesh.rules))
    _, _, params, _ = load_run(run, make_mesh(mesh_cfg, jax.devices()[:1]), logical_rules(mesh_cfg))
    arch, out = encoder_arch(run_cfg.model), {"encoder": jax.device_get(params["encoder"])}
    if run_cfg.get("objective") == "wsp":  # MAWS-style: learned positions and the classifier head (real classes)
        arch = dataclasses.replace(arch, positions=run_cfg.wsp.pos_embed)
        out["head"] = unpad_head(jax.device_get(params["head"]), run_cfg.wsp.num_classes)
    return arch, None, out


def load_source(source: str, heads: int = 0, variant: str = "", decoder_heads: int = 0):
    """`load_any`, or the encoder of a pretraining workdir (RUN_DIR[/checkpoints/STEP])."""
    path = os.path.expanduser(source)
    if is_run_dir(path):
        return load_run_weights(path)
    return load_any(path, heads, variant, decoder_heads)


def convert(source: str, out: str, fmt: str, heads: int = 0, variant: str = "", decoder_heads: int = 0) -> str:
    """Convert `source` to `out` in `fmt`; returns a one-line summary."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format={fmt!r}: use one of {FORMATS}")
    if fmt == "hf_swinv2":  # a directory (config.json + model.safetensors), not one file
        from mim_jax.convert.swinv2_weights import convert_to_hf
        return convert_to_hf(source, out)
    if not out.endswith(".safetensors"):
        raise ConfigError(f"--out={out!r}: must end in .safetensors")
    arch, decoder, params = load_source(source, heads, variant, decoder_heads)
    if fmt == "timm":
        export_timm(params["encoder"], arch, out, head=params.get("head"))
    else:
        save_native(params, arch, out, decoder)
    parts = " + ".join(p for p in ("encoder", "decoder", "head") if p in params)
    return (f"{source} -> {out} ({fmt}): {parts}, width {arch.width}, depth {arch.depth}, heads {arch.heads}, "
            f"patch {arch.patch_size}, grid {arch.grid_size}, {arch.positions} positions")
