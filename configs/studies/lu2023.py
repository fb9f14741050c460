"""Lu et al. 2023 ("Delving deeper into data scaling in masked image modeling"): 30 cells.

ViT-B/16, L/16, H/16 x the five nested Coyo subsets (0.5M, 1M, 5M, 10M, 100M images, nested by key hash) x two
targets (CLIP-B/16 features, objective=mae_teacher; RGB pixels, objective=mae). Epochs {300, 300, 300, 90, 15} with
warmup {40, 40, 40, 40, 1} epochs per subset, a 4-block decoder, batch 4096, MAE's optimizer (configs/pretrain.py).
Each cell keeps the TPU slice configs/pretrain.py planned for its size (H/16 takes H/14's: same width and depth).

    python -m mim_jax.study run --config=configs/studies/lu2023.py --launcher=slurm --root=/shared/lu --dry_run
    python -m mim_jax.study run --config=configs/studies/lu2023.py:clip_weights=/w/clip_b16.pt,data=/data/coyo ...

Arguments: clip_weights=PATH (the CLIP-B/16 teacher, for the clip cells), data=PATH (the ingested Coyo dataset),
and axis selections such as model=B/16|L/16.
"""
from mim_jax.config import recipes
from mim_jax.study.grid import Axis, Study, Value

BATCH = 4096
# subset label -> (images, epochs, warmup epochs)
SUBSETS = {"0.5M": (500_000, 300, 40), "1M": (1_000_000, 300, 40), "5M": (5_000_000, 300, 40),
           "10M": (10_000_000, 90, 40), "100M": (100_000_000, 15, 1)}
MODELS = {"B/16": ({"model": "B/16"}, {}), "L/16": ({"model": "L/16"}, {}),
          "H/16": ({"model": "H/14"}, {"model.patch_size": 16})}  # H/16: the H/14 size table row, 16-px patches
OWN_ARGS = ("clip_weights", "data")


def data_value(label: str) -> Value:
    """A nested Coyo subset with its epochs and warmup converted to steps at batch 4096."""
    images, epochs, warmup = SUBSETS[label]
    return Value(label, overrides={"data.subset.kind": "random", "data.subset.count": images,
                                   "total_steps": epochs * images // BATCH,
                                   "optim.warmup_steps": warmup * images // BATCH}, x=images)


def get_study(arg: str = "") -> Study:
    """The 3 x 5 x 2 grid (arguments: clip_weights=PATH, data=PATH, axis=label|label)."""
    items = [a for a in (arg or "").split(",") if a]
    own = recipes.parse_arg(",".join(a for a in items if a.split("=")[0] in OWN_ARGS), OWN_ARGS)
    rest = ",".join(a for a in items if a.split("=")[0] not in OWN_ARGS)
    clip = {"teacher.type": "clip", **({"teacher.weights": own["clip_weights"]} if "clip_weights" in own else {})}
    axes = (
        Axis("model", tuple(Value(name, args=args, overrides=extra) for name, (args, extra) in MODELS.items())),
        Axis("data", tuple(data_value(label) for label in SUBSETS)),
        Axis("target", (Value("clip", args={"target": "clip"}, overrides=clip), Value("rgb", args={"target": "pixel"}))),
    )
    overrides = {"mae.decoder.depth": 4, "data.path": own.get("data", "/data/coyo"),
                 "evals.objective_loss.at_end": True}
    study = Study(name="lu2023", config="configs/pretrain.py", axes=axes, args={"batch": BATCH},
                  overrides=overrides, assumed_mfu=0.4, metric="val_loss",
                  description="Lu et al. 2023: model x Coyo subset x target")
    return study.select(rest)
