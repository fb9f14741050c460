"""MAE pretraining configs at paper scale. Usage:

    --config=configs/pretrain.py:model=L/16[,recipe=mae|maws][,batch=4096]

Arguments (comma separated key=value):
  model   a ViT size: B/16 (default), L/16, H/14, 2B/14, 6.5B/14 (or a small size for tests)
  recipe  mae  (He et al. 2022: ImageNet-1K, 800 epochs, blr 1.5e-4, 40 warmup epochs)
          maws (Singh et al. 2023, MAE pre-pretraining stage: one epoch of a ~3B-image web dataset)
  batch   global batch size (default 4096, both papers)
  target  pixel (default: MAE's normalized pixels) | clip | dino | mae_run: feature targets of a frozen
          teacher (Lu et al.; objective=mae_teacher), weights from --config.teacher.weights=PATH

Each paper size names the TPU slice it was planned for (`config.plan.topology`), with the mesh and
activation rematerialization that fit there: `python -m mim_jax.plan --config=configs/pretrain.py:model=X`
re-checks it (benchmarks/RESULTS.md has the table). Every field can be overridden on the command line,
e.g. --config.optim.base_lr=1.5e-4 --config.mesh.shape='(1,-1,1)'.
"""
import ml_collections

from mim_jax.config import recipes
from mim_jax.config.defaults import IMAGENET_TRAIN_SIZE, base_config

ARGS = ("model", "batch", "recipe", "target")
RECIPES = ("mae", "maws")
TARGETS = ("pixel", "clip", "dino", "mae_run")
MAWS_DATASET_SIZE = 3_000_000_000  # IG-3B, seen once in the MAE stage

# size -> (TPU slice, mesh (data, fsdp, tensor), remat) for global batch 4096, planned with mim_jax.plan.
PAPER_SCALE = {
    "B/16": ("v5p:2x2x1", (-1, 1, 1), "save_dots"),
    "L/16": ("v5p:2x2x2", (1, -1, 1), "save_dots"),
    "H/14": ("v5p:2x2x4", (1, -1, 1), "save_dots"),
    "2B/14": ("v5p:4x4x2", (1, -1, 1), "save_dots"),
    "6.5B/14": ("v5p:4x4x8", (1, -1, 1), "save_dots"),
}
# MAWS trained its largest model in full precision for stability.
FP32_SIZES = ("6.5B/14",)


def parse_arg(arg: str) -> dict:
    """'model=L/16,batch=4096' -> {'model': 'L/16', 'batch': '4096'}."""
    return recipes.parse_arg(arg, ARGS, {"recipe": RECIPES, "target": TARGETS})


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """MAE pretraining of a paper-size ViT (MAE or MAWS recipe) with its planned slice and mesh."""
    args = parse_arg(arg)
    c = base_config()
    c.model.variant = args.get("model", "B/16")
    c.data.global_batch_size = batch = int(args.get("batch", 4096))
    if args.get("recipe", "mae") == "mae":
        c.total_steps = 800 * IMAGENET_TRAIN_SIZE // batch
        c.optim.warmup_steps = 40 * IMAGENET_TRAIN_SIZE // batch
    else:
        c.total_steps = MAWS_DATASET_SIZE // batch
        c.optim.warmup_steps = c.total_steps // 20  # our choice: 5% of the single epoch
    if c.model.variant in PAPER_SCALE:
        c.plan.topology, c.mesh.shape, c.model.remat = PAPER_SCALE[c.model.variant]
    if c.model.variant in FP32_SIZES:
        c.model.dtype = "float32"
    if args.get("target", "pixel") != "pixel":
        c.objective = "mae_teacher"
        c.teacher.type = args["target"]
    return c
