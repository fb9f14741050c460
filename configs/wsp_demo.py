"""WSP (MAWS's second stage) on the multi-label 'shapes' data: the quickstart's tiny ViT, from scratch or from an MAE run.

Usage: python -m mim_jax.pretrain --config=configs/wsp_demo.py --workdir=workdirs/wsp_scratch
       python -m mim_jax.pretrain --config=configs/wsp_demo.py:init=workdirs/demo --workdir=workdirs/wsp_from_mae
Trains on the multi-label variant of the embedded dataset (1-3 shapes per image, tags = the families present, with
tag noise; `python -m mim_jax.data.synthetic --multi_label`) and evaluates like the quickstart (probe, kNN,
few-shot) on the standard single-label shapes (`config.eval_data`). `init=RUN_DIR` initializes the encoder from
that MAE run (its fixed sin-cos table seeds WSP's learned one); both variants run the same WSP steps.
"""
import ml_collections

from mim_jax.config.recipes import load_sibling, parse_arg

NUM_FAMILIES = 10  # the shapes' classes
MAX_TAGS = 4       # up to 3 true families + 1 noise tag per image


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """The quickstart's model and evaluators (Ti/16 x 4 blocks at 64 px), 300 WSP steps x 256 multi-label images."""
    args = parse_arg(arg, ("init",))
    demo = load_sibling(__file__, "demo.py")
    c = demo.shared_config()
    c.eval_data = c.data.copy_and_resolve_references()  # probe / kNN / few-shot: the single-label shapes
    c.objective = "wsp"
    c.total_steps = 300
    c.wsp.num_classes = NUM_FAMILIES
    c.wsp.pos_embed = "learned"           # MAWS's ViT; an MAE init fills it with the MAE sin-cos table
    c.data.synthetic.multi_label = True
    c.data.max_labels = MAX_TAGS
    c.data.crop_scale = (0.5, 1.0)        # keep most of the 2 x 2 grid, so the tags stay mostly true of the crop
    # MAWS's AdamW (betas 0.9 / 0.999, wd 0.1, linear decay after 5% warmup) at a demo lr for batch 256.
    c.optim.update(dict(base_lr=5e-4, b1=0.9, b2=0.999, weight_decay=0.1, warmup_steps=15, min_lr=0.0,
                        schedule="linear"))
    c.evals.val_loss.every_steps = 0      # the MAE reconstruction loss does not apply to WSP
    for name in ("linear_probe", "knn", "fewshot"):
        c.evals[name].random_init_baseline = False  # the quickstart's run already reports the random init
    if "init" in args:
        c.init_from = args["init"]
    return c
