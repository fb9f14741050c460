"""CLI: python -m mim_jax.convert --from=CHECKPOINT --format=mim_jax|timm --out=FILE.safetensors.

--from: a PyTorch checkpoint (read with weights_only=True or safetensors; layout detected from its keys),
an HF model directory, a mim_jax-format file, or a pretraining workdir (RUN_DIR[/checkpoints/STEP]).
--format=mim_jax writes params trees this project loads ({'encoder'[, 'decoder']} + architecture);
--format=timm writes the encoder as timm-compatible safetensors.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from absl import app, flags

from mim_jax.errors import ConfigError

FORMATS = ("mim_jax", "timm")


def load_any(source: str, heads: int = 0, variant: str = "", decoder_heads: int = 0):
    """(ViTArch, decoder dims or None, params {'encoder'[, 'decoder']}) of any supported source."""
    from mim_jax.convert import native
    from mim_jax.convert.checkpoint_files import read_checkpoint
    from mim_jax.convert.mae_checkpoints import import_mae
    path = os.path.expanduser(source)
    if is_run_dir(path):
        return load_run_weights(path)
    if os.path.isfile(path) and native.is_native(path):
        arch, params = native.load_native(path)
        return arch, None, params
    if not heads and path.endswith(".safetensors") and os.path.isfile(path):
        stored = native.read_arch(path)  # our timm exports record their architecture
        heads = stored.heads if stored else 0
    sd, hf_config = read_checkpoint(path)
    return import_mae(sd, hf_config, heads, variant, decoder_heads)


def is_run_dir(path: str) -> bool:
    """Whether `path` is a pretraining workdir or one of its checkpoints/<step> directories."""
    run_dir = os.path.isdir(os.path.join(path, "checkpoints")) and os.path.isfile(os.path.join(path, "config.json"))
    return run_dir or os.path.basename(os.path.dirname(path.rstrip("/"))) == "checkpoints"


def load_run_weights(run: str):
    """(arch, None, {'encoder': ...}) of a pretraining run's latest (or given) checkpoint, on one CPU device."""
    import jax
    import ml_collections
    from mim_jax.checkpoints import load_run_config, locate_checkpoint
    from mim_jax.models.teachers import encoder_arch
    from mim_jax.pretrained import load_run
    from mim_jax.sharding import logical_rules, make_mesh
    run_cfg = load_run_config(locate_checkpoint(run)[0])
    mesh_cfg = ml_collections.ConfigDict(dict(shape=(1, 1, 1), rules=run_cfg.mesh.rules))
    _, _, params, _ = load_run(run, make_mesh(mesh_cfg, jax.devices()[:1]), logical_rules(mesh_cfg))
    return encoder_arch(run_cfg.model), None, {"encoder": jax.device_get(params["encoder"])}


def convert(source: str, out: str, fmt: str, heads: int = 0, variant: str = "", decoder_heads: int = 0) -> str:
    """Convert `source` to `out` in `fmt`; returns a one-line summary."""
    from mim_jax.convert.export import export_timm
    from mim_jax.convert.native import save_native
    if fmt not in FORMATS:
        raise ConfigError(f"--format={fmt!r}: use one of {FORMATS}")
    if not out.endswith(".safetensors"):
        raise ConfigError(f"--out={out!r}: must end in .safetensors")
    arch, decoder, params = load_any(source, heads, variant, decoder_heads)
    if fmt == "timm":
        export_timm(params["encoder"], arch, out)
    else:
        save_native(params, arch, out, decoder)
    parts = "encoder + decoder" if "decoder" in params else "encoder"
    return (f"{source} -> {out} ({fmt}): {parts}, width {arch.width}, depth {arch.depth}, heads {arch.heads}, "
            f"patch {arch.patch_size}, grid {arch.grid_size}, {arch.positions} positions")


def main(argv: Sequence[str]) -> None:
    """absl entry point."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        print(convert(f["from"].value, f.out, f.format, f.heads, f.variant, f.decoder_heads))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def run(argv: Optional[Sequence[str]] = None) -> None:
    """Define the flags and run (console entry point)."""
    flags.DEFINE_string("from", None, "checkpoint file, HF model directory, or pretraining workdir", required=True)
    flags.DEFINE_string("out", None, "output .safetensors path", required=True)
    flags.DEFINE_enum("format", "mim_jax", FORMATS, "mim_jax (params + architecture) or timm (encoder)")
    flags.DEFINE_integer("heads", 0, "attention heads, when neither the file nor the size table tells")
    flags.DEFINE_integer("decoder_heads", 0, "MAE decoder heads when the file does not tell (default 16, as MAE)")
    flags.DEFINE_string("variant", "", "expected size (e.g. B/16): the checkpoint must match it")
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
