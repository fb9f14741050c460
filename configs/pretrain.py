"""MAE pretraining config. Usage: --config=configs/pretrain.py:model=L/16[,batch=4096]

Arguments (comma separated key=value): model (a ViT size, default B/16), batch (global batch size).
Every field can be overridden on the command line, e.g. --config.optim.base_lr=1.5e-4.
"""
import ml_collections

from mim_jax.configuration import IMAGENET_TRAIN_SIZE, base_config

# MAE recipe (He et al. 2022): blr 1.5e-4, AdamW(0.9, 0.95), wd 0.05, batch 4096, 800 epochs, 40 warmup.


def parse_arg(arg: str) -> dict:
    """'model=L/16,batch=4096' -> {'model': 'L/16', 'batch': '4096'}."""
    out = {}
    for item in filter(None, (arg or "").split(",")):
        if "=" not in item:
            raise ValueError(f"config argument {item!r} must look like key=value (keys: model, batch)")
        key, value = item.split("=", 1)
        if key not in ("model", "batch"):
            raise ValueError(f"unknown config argument {key!r}; use model=<size> and/or batch=<int>")
        out[key] = value
    return out


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """MAE pretraining of a paper-size ViT on ImageNet-1K-like data (800 epochs at batch 4096)."""
    args = parse_arg(arg)
    c = base_config()
    c.model.variant = args.get("model", "B/16")
    c.data.global_batch_size = int(args.get("batch", 4096))
    c.total_steps = 800 * IMAGENET_TRAIN_SIZE // c.data.global_batch_size
    c.optim.warmup_steps = 40 * IMAGENET_TRAIN_SIZE // c.data.global_batch_size
    return c
