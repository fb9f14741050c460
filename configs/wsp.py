"""WSP (weakly supervised pretraining, MAWS's second stage) configs at paper scale. Usage:

    --config=configs/wsp.py:model=L/16[,recipe=maws|in21k][,init=PATH]

Arguments (comma separated key=value):
  model   a ViT size: B/16 (default), L/16, H/14, 2B/14, 6.5B/14 (or a small size for tests)
  recipe  maws  (Singh et al. 2023, Table 11: IG-3B hashtags as ~28K synsets; one pass over ~5B samples at batch
                8192, AdamW peak lr 4e-4, linear decay, 5% warmup, wd 0.1, betas (0.9, 0.999), RandomResizedCrop
                scale [0.08, 1]; 2B/14: lr 1e-4, grad clip 1.0, beta2 0.95; 6.5B/14 in fp32)
          in21k (Table 13, the medium-scale setting: ImageNet-21K as one-element label sets, batch 4096, 90 epochs,
                cosine from peak 1e-3, 3.3% warmup, wd 0.1, grad clip 1.0, RandAugment (2, 9) as
                data.auto_augment='rand-m9-n2' (2 ops at fixed magnitude 9), mixup alpha 0.5 as wsp.mixup)
  init    an MAE run dir, an official MAE / MAWS .pth, or a converted file: MAE->WSP (config.init_from); the
          encoder is loaded (a sin-cos MAE table seeds the learned WSP table), the head starts fresh

The class count of recipe=maws is 28,000 (the issue's "~28K"; the exact MAWS vocabulary size was not found); set
--config.wsp.num_classes to your vocabulary's size. Each size names the TPU slice it was planned for
(`config.plan.topology`): `python -m mim_jax.plan --config=configs/wsp.py:model=X,recipe=maws` re-checks it.
"""
import ml_collections

from mim_jax.config import recipes
from mim_jax.config.defaults import base_config

ARGS = ("model", "recipe", "init")
RECIPES = ("maws", "in21k")
MAWS_SAMPLES = 5_000_000_000     # Table 11: one pass over ~5B samples
MAWS_CLASSES = 28_000            # "~28K" WordNet synsets (our figure; see the module docstring)
MAWS_MAX_LABELS = 16             # our choice: label-set slots per image in a batch (padded with -1)
IN21K_TRAIN_SIZE = 14_197_122    # ImageNet-21K (fall 2011 release)
IN21K_CLASSES = 21_841
IN21K_RANDAUGMENT = "rand-m9-n2"  # Table 13's RandAugment (N, M) = (2, 9), fixed magnitude (timm spec)
IN21K_MIXUP = 0.5                 # Table 13's mixup alpha

# size -> (TPU slice, mesh (data, fsdp, tensor), remat) for recipe=maws (batch 8192), planned with mim_jax.plan.
PAPER_SCALE = {
    "B/16": ("v5p:4x4x2", (-1, 1, 1), "save_dots"),
    "L/16": ("v5p:4x4x2", (1, -1, 1), "save_dots"),
    "H/14": ("v5p:4x4x4", (1, -1, 1), "save_dots"),
    "2B/14": ("v5p:4x4x8", (1, -1, 1), "save_dots"),
    "6.5B/14": ("v5p:8x8x8", (1, -1, 1), "save_dots"),
}
FP32_SIZES = ("6.5B/14",)        # MAWS trained its largest model in full precision for stability


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """WSP pretraining of a paper-size ViT (MAWS IG or IN-21K recipe) with its planned slice and mesh."""
    args = recipes.parse_arg(arg, ARGS, {"recipe": RECIPES})
    c = base_config()
    c.objective = "wsp"
    c.model.variant = variant = args.get("model", "B/16")
    c.model.image_size = 224
    c.wsp.pos_embed = "learned"
    if args.get("recipe", "maws") == "maws":
        maws_recipe(c, variant)
    else:
        in21k_recipe(c)
    if variant in PAPER_SCALE:
        c.plan.topology, c.mesh.shape, c.model.remat = PAPER_SCALE[variant]
    if variant in FP32_SIZES:
        c.model.dtype = "float32"
    c.evals.val_loss.every_steps = 0  # the MAE reconstruction loss does not apply to WSP
    if "init" in args:
        c.init_from = args["init"]
    return c


def maws_recipe(c: ml_collections.ConfigDict, variant: str) -> None:
    """Table 11: IG-3B hashtags, batch 8192, AdamW with linear decay; 2B/14 with lr 1e-4, clip 1.0, beta2 0.95."""
    batch = c.data.global_batch_size = 8192
    c.wsp.num_classes = MAWS_CLASSES
    c.data.max_labels = MAWS_MAX_LABELS
    c.data.crop_scale = (0.08, 1.0)
    c.total_steps = MAWS_SAMPLES // batch
    c.optim.warmup_steps = c.total_steps // 20
    big = variant == "2B/14"
    peak = 1e-4 if big else 4e-4
    c.optim.update(dict(base_lr=peak * 256 / batch, schedule="linear", min_lr=0.0, weight_decay=0.1, b1=0.9,
                        b2=0.95 if big else 0.999, grad_clip_norm=1.0 if big else 0.0))


def in21k_recipe(c: ml_collections.ConfigDict) -> None:
    """Table 13: ImageNet-21K, batch 4096, 90 epochs, cosine from 1e-3, 3.3% warmup, wd 0.1, clip 1.0,
    RandAugment (2, 9), mixup 0.5."""
    batch = c.data.global_batch_size = 4096
    c.wsp.num_classes = IN21K_CLASSES
    c.data.crop_scale = (0.08, 1.0)
    c.data.auto_augment = IN21K_RANDAUGMENT
    c.wsp.mixup = IN21K_MIXUP
    c.total_steps = 90 * IN21K_TRAIN_SIZE // batch
    c.optim.warmup_steps = round(0.033 * c.total_steps)
    c.optim.update(dict(base_lr=1e-3 * 256 / batch, schedule="cosine", min_lr=0.0, weight_decay=0.1, b1=0.9,
                        b2=0.999, grad_clip_norm=1.0))
