"""CLI: python -m mim_jax.convert --from=CHECKPOINT --format=mim_jax|timm --out=FILE.safetensors
     python -m mim_jax.convert --from=SWINV2_PTH_OR_RUN --format=hf_swinv2 --out=DIR (an HF Swinv2 checkpoint).

--from: a PyTorch checkpoint (read with weights_only=True or safetensors; layout detected from its keys),
an HF model directory, a mim_jax-format file, or a pretraining workdir (RUN_DIR[/checkpoints/STEP]).
--format=mim_jax writes params trees this project loads ({'encoder'[, 'decoder']} + architecture);
--format=timm writes the encoder as timm-compatible safetensors.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import app, flags

from mim_jax import console  # noqa: F401  (first: quiet library start-up, before TensorFlow loads)
from mim_jax.convert.conversion import FORMATS, convert
from mim_jax.errors import ConfigError


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


def run(argv: Sequence[str] | None = None) -> None:
    """Define the flags and run (console entry point)."""
    flags.DEFINE_string("from", None, "checkpoint file, HF model directory, or pretraining workdir", required=True)
    flags.DEFINE_string("out", None, "output .safetensors path (hf_swinv2: a directory)", required=True)
    flags.DEFINE_enum("format", "mim_jax", FORMATS, "mim_jax (params + architecture), timm (encoder), or hf_swinv2 "
                      "(a SwinV2 file or run -> an HF Swinv2 directory)")
    flags.DEFINE_integer("heads", 0, "attention heads, when neither the file nor the size table tells")
    flags.DEFINE_integer("decoder_heads", 0, "MAE decoder heads when the file does not tell (default 16, as MAE)")
    flags.DEFINE_string("variant", "", "expected size (e.g. B/16): the checkpoint must match it")
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
