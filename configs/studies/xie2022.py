"""Xie et al. ("On data scaling in masked image modeling"): SimMIM, 8 models x 5 data sizes x 3 lengths = 120 cells.

SwinV2-S/B/L/H/g and ViT-B/16, L/16, H/16 x ImageNet-1K 10% / 20% / 50% / 100% (class-balanced nested subsets)
and ImageNet-22K x 125K / 250K / 500K steps, recipe=xie of configs/simmim.py (192 px, window-normalized targets,
the step schedule, x0.1 for the last 1/8). The 125K and 250K cells branch from the 500K cell at their decay points
(109,375 and 218,750): the shared first stage. Each cell ends with its validation loss (objective_loss).
SwinV2 cells take configs/simmim.py's swinv2 sizes (model.family=swinv2); to list only the ViT cells:

    python -m mim_jax.study run --config=configs/studies/xie2022.py --cells='^ViT' --launcher=tpu --root=gs://B/xie \\
        --dry_run -- --project=P --zone=Z

Arguments: in1k=PATH, in22k=PATH (ingested datasets) and axis selections such as model=ViT-B|ViT-L.
"""
from mim_jax.config import recipes
from mim_jax.study.grid import Axis, Study, Value

IN1K, IN22K = 1_281_167, 14_197_122
VIT = {"ViT-B": ({"model": "B/16"}, {}, 86e6), "ViT-L": ({"model": "L/16"}, {}, 304e6),
       # ViT-H/16: the H/14 row with 16-px patches (14 does not divide 192 px), on H/14's planned slice
       "ViT-H": ({"model": "L/16"}, {"model.variant": "H/14", "model.patch_size": 16, "plan.topology": "v5p:2x2x4"},
                 632e6)}
SWINV2 = {"SwinV2-S": ("swinv2_s", 50e6), "SwinV2-B": ("swinv2_b", 88e6), "SwinV2-L": ("swinv2_l", 197e6),
          "SwinV2-H": ("swinv2_h", 658e6), "SwinV2-g": ("swinv2_g", 1.06e9)}
LENGTHS = (125_000, 250_000, 500_000)
OWN_ARGS = ("in1k", "in22k")


def get_study(arg: str = "") -> Study:
    """The 8 x 5 x 3 grid (arguments: in1k=PATH, in22k=PATH, axis=label|label)."""
    items = [a for a in (arg or "").split(",") if a]
    own = recipes.parse_arg(",".join(a for a in items if a.split("=")[0] in OWN_ARGS), OWN_ARGS)
    rest = ",".join(a for a in items if a.split("=")[0] not in OWN_ARGS)
    in1k, in22k = own.get("in1k", "/data/in1k"), own.get("in22k", "/data/in22k")
    models = tuple(Value(label, args={"model": variant}, needs={"model": variant}, x=params)
                   for label, (variant, params) in SWINV2.items())
    models += tuple(Value(label, args=args, overrides=extra, x=params) for label, (args, extra, params) in VIT.items())
    fractions = (("IN1K-10", 0.1), ("IN1K-20", 0.2), ("IN1K-50", 0.5))
    data = tuple(Value(label, overrides={"data.path": in1k, "data.subset.kind": "balanced",
                                         "data.subset.fraction": f}, x=round(f * IN1K)) for label, f in fractions)
    data += (Value("IN1K", overrides={"data.path": in1k, "data.subset.kind": "all"}, x=IN1K),
             Value("IN22K", overrides={"data.path": in22k, "data.subset.kind": "all"}, x=IN22K))
    lengths = tuple(Value(f"{n // 1000}K", args={"steps": n}, x=n) for n in LENGTHS)
    study = Study(name="xie2022", config="configs/simmim.py", args={"recipe": "xie"},
                  axes=(Axis("model", models), Axis("data", data), Axis("length", lengths)),
                  overrides={"evals.objective_loss.at_end": True}, assumed_mfu=0.4, metric="val_loss",
                  description="Xie et al.: model x data x length, validation loss vs compute")
    return study.select(rest)
