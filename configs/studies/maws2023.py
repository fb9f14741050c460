"""MAWS (Singh et al. 2023): MAE pre-pretraining, then weakly supervised pretraining (WSP), ViT-B..6.5B: 15 cells.

ViT-B/16, L/16, H/14, 2B/14, 6.5B/14 x init: `mae` (the MAE stage alone: one epoch of a ~3B-image set,
configs/pretrain.py recipe=maws), `wsp` (WSP from scratch) and `maws` (WSP initialized from the same model's
`mae` cell: MAWS), WSP from configs/wsp.py recipe=maws. The maws cells run after their mae cells. The WSP
cells need objective 'wsp' and configs/wsp.py; until they are there, select the MAE cells (--cells=_mae$).

Arguments: data=PATH (the ingested image-text / hashtag set) and axis selections such as model=B/16|L/16.
"""
from mim_jax.config import recipes
from mim_jax.study.grid import Axis, Study, Value

MODELS = {"B/16": 86e6, "L/16": 304e6, "H/14": 632e6, "2B/14": 1.89e9, "6.5B/14": 6.44e9}
WSP_CONFIG = "configs/wsp.py"
OWN_ARGS = ("data",)


def get_study(arg: str = "") -> Study:
    """The 5 x 3 grid (arguments: data=PATH, axis=label|label)."""
    items = [a for a in (arg or "").split(",") if a]
    own = recipes.parse_arg(",".join(a for a in items if a.split("=")[0] in OWN_ARGS), OWN_ARGS)
    rest = ",".join(a for a in items if a.split("=")[0] not in OWN_ARGS)
    models = Axis("model", tuple(Value(name, args={"model": name}, x=params) for name, params in MODELS.items()))
    wsp_needs = {"objective": "wsp"}
    init = Axis("init", (
        Value("mae", config="configs/pretrain.py"),
        Value("wsp", config=WSP_CONFIG, needs=wsp_needs),
        Value("maws", config=WSP_CONFIG, needs=wsp_needs, overrides={"init_from": "{cell:init=mae}"}),
    ))
    study = Study(name="maws2023", config="configs/pretrain.py", args={"recipe": "maws"}, axes=(models, init),
                  overrides={"data.path": own.get("data", "/data/ig3b")}, assumed_mfu=0.4, metric="finetune/top1",
                  description="MAWS: MAE -> WSP against WSP over model sizes")
    return study.select(rest)
