"""Teacher targets on the embedded dataset: an earlier pixel-MAE run's encoder is the frozen teacher (Lu et al.).

Usage (after a pixel run, e.g. the quickstart into workdirs/demo):
  python -m mim_jax.pretrain --config=configs/teacher_demo.py:workdirs/demo --workdir=workdirs/teacher_demo
The argument is the teacher's run directory (or RUN/checkpoints/STEP); it defaults to workdirs/demo.
"""
import ml_collections

from mim_jax.config.recipes import load_sibling


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The quickstart recipe with objective mae_teacher and teacher.type=mae_run."""
    c = load_sibling(__file__, "demo.py").get_config()
    c.objective = "mae_teacher"
    c.teacher.type = "mae_run"
    c.teacher.weights = arg or "workdirs/demo"
    c.teacher.feature = "final"   # the teacher encoder's output after its final LayerNorm
    c.teacher.dtype = "float32"   # CPU runs bf16 slowly; use bfloat16 on accelerators
    c.evals.val_loss.every_steps = 0  # the pixel reconstruction loss does not apply to feature targets
    return c
