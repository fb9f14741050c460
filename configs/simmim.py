"""SimMIM pretraining configs on ViT at paper scale. Usage:

    --config=configs/simmim.py:model=B/16[,recipe=simmim|xie][,steps=125000|250000|500000]

Arguments (comma separated key=value):
  model   a ViT size: B/16 (default), L/16, H/14 (or a small size for tests), or a SwinV2 size of Xie et al.
          2023 Table 1: swinv2_s, swinv2_b, swinv2_l, swinv2_h, swinv2_g (patch 4, window 12, 192 px in both
          recipes as in the SimMIM repo's SwinV2 configs; encoder stride 32 with a 1x1 conv to 32^2 x 3)
  recipe  simmim (Xie et al. 2022, SimMIM's ViT-B recipe: 224 px, 800 epochs of ImageNet-1K, 10 warmup epochs)
          xie    (Xie et al. 2023, "On Data Scaling in Masked Image Modeling", Table 1: 192 px, 6250 warmup
                 steps, 125K / 250K / 500K steps, window-normalized targets)
  steps   xie only: training length (default 125000)

Both recipes: mask patch 32 px (28 px for /14 models at 224 px), ratio 0.6, AdamW lr 4e-4 at batch 2048 (betas
0.9 / 0.999, eps 1e-8, wd 0.05), a step schedule (x0.1 for the last 1/8 of training), grad clip 5.0, drop path 0.1,
RandomResizedCrop scale [0.67, 1], ratio [3/4, 4/3], flip. A /14 model at 192 px (xie) is refused: 14 does not
divide 192. Each size names the TPU slice it was planned for (`config.plan.topology`): re-check with
`python -m mim_jax.plan --config=configs/simmim.py:model=X,recipe=xie`.
"""
import ml_collections

from mim_jax.config import recipes
from mim_jax.config.defaults import IMAGENET_TRAIN_SIZE, base_config

ARGS = ("model", "recipe", "steps")
RECIPES = ("simmim", "xie")
XIE_STEPS = (125_000, 250_000, 500_000)
BATCH = 2048
LR_AT_BATCH = 4e-4  # both papers at batch 2048; our lr is base_lr * batch / 256

# size -> (TPU slice, mesh (data, fsdp, tensor), remat) at batch 2048, planned with mim_jax.plan (B/16, L/16: recipe
# xie, 22% of HBM; H/14: recipe simmim, 32%; docs/configs_and_objectives.md).
PAPER_SCALE = {
    "B/16": ("v5p:2x2x1", (-1, 1, 1), "save_dots"),
    "L/16": ("v5p:2x2x2", (1, -1, 1), "save_dots"),
    "H/14": ("v5p:2x2x4", (1, -1, 1), "save_dots"),
    "swinv2_s": ("v5p:2x2x1", (-1, 1, 1), "save_dots"),
    "swinv2_b": ("v5p:2x2x1", (-1, 1, 1), "save_dots"),
    "swinv2_l": ("v5p:2x2x2", (1, -1, 1), "save_dots"),
    "swinv2_h": ("v5p:2x2x4", (1, -1, 1), "save_dots"),
    "swinv2_g": ("v5p:2x2x4", (1, -1, 1), "save_dots"),
}
SWIN_IMAGE, SWIN_WINDOW = 192, 12  # SimMIM's SwinV2 pretraining (img192_window12) and Xie et al. 2023


def parse_arg(arg: str) -> dict:
    """'model=L/16,recipe=xie' -> {'model': 'L/16', 'recipe': 'xie'}; unknown keys and values fail in one line."""
    out = recipes.parse_arg(arg, ARGS, {"recipe": RECIPES})
    if "steps" in out and (out.get("recipe") != "xie" or int(out["steps"]) not in XIE_STEPS):
        raise ValueError(f"config argument steps={out['steps']!r}: recipe=xie takes one of {XIE_STEPS}")
    return out


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """SimMIM pretraining of a paper-size ViT (SimMIM or Xie et al. recipe) with its planned slice and mesh."""
    args = parse_arg(arg)
    c = base_config()
    c.objective = "simmim"
    c.model.variant = args.get("model", "B/16")
    xie = args.get("recipe", "simmim") == "xie"
    c.model.image_size = 192 if xie else 224
    c.model.drop_path = 0.1
    if c.model.variant.startswith("swinv2"):
        c.model.family, c.model.image_size, c.model.window_size = "swinv2", SWIN_IMAGE, SWIN_WINDOW
    patch = int(c.model.variant.rsplit("/", 1)[1]) if "/" in c.model.variant else 16
    if c.model.family == "swinv2":
        patch = 4
    if xie and c.model.image_size % patch:
        raise ValueError(f"model={c.model.variant}: patch {patch} does not divide recipe=xie's 192 px; use a /16 "
                         f"model, or recipe=simmim (224 px, 28-px mask cells for /14)")
    c.simmim.mask_patch_size = 32 if 32 % patch == 0 else 2 * patch  # /14 at 224 px: 28-px cells (8 x 8)
    c.simmim.mask_ratio = 0.6
    c.simmim.norm_target_window = 47 if xie else 0
    c.data.global_batch_size = BATCH
    c.data.crop_scale = (0.67, 1.0)
    c.data.crop_ratio = (3 / 4, 4 / 3)
    if xie:
        c.total_steps = int(args.get("steps", XIE_STEPS[0]))
        c.optim.warmup_steps = 6250
    else:
        c.total_steps = 800 * IMAGENET_TRAIN_SIZE // BATCH
        c.optim.warmup_steps = 10 * IMAGENET_TRAIN_SIZE // BATCH
    c.optim.update(dict(base_lr=LR_AT_BATCH * 256 / BATCH, b1=0.9, b2=0.999, weight_decay=0.05, grad_clip_norm=5.0,
                        schedule="step", step_decay_at=7 / 8, step_decay_factor=0.1))
    c.evals.val_loss.every_steps = 0  # the MAE pixel reconstruction loss does not apply to SimMIM
    if c.model.variant in PAPER_SCALE:
        c.plan.topology, c.mesh.shape, c.model.remat = PAPER_SCALE[c.model.variant]
    return c
