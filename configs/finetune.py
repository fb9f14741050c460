"""End-to-end fine-tuning (MAE recipe, He et al. 2022 Table 9) of a pretrained encoder.

Usage: python -m mim_jax.evaluate --config=configs/finetune.py:model=B/16 --config.init_from=PRETRAIN_WORKDIR
       --workdir=DIR
  model=B/16  AdamW, blr 5e-4, layer decay 0.65, drop path 0.1, 100 epochs
  model=L/16  blr 1e-3, layer decay 0.75, drop path 0.1, 50 epochs
  model=H/14  blr 1e-3, layer decay 0.75, drop path 0.2, 50 epochs
All sizes: batch 1024, 5 warmup epochs, wd 0.05, betas (0.9, 0.999), label smoothing 0.1, mixup 0.8, cutmix 1.0,
random erasing 0.25, cosine to min_lr 1e-6, RandAugment `eval.auto_augment="rand-m9-mstd0.5-inc1"` (timm spec,
applied on the host after RandomResizedCrop + flip; "" turns it off). (The MAE repository's FINETUNE.md uses drop
path 0.2 for L and 0.3 for H; override with --config.eval.drop_path.) `demo` is a CPU-sized run for the
configs/demo.py encoder, without RandAugment: it would add only ~0.2 ms of host time per 64-px image, but three
epochs are already over-regularized and the demo row in docs/evaluation.md was measured without it
(--config.eval.auto_augment=rand-m9-mstd0.5-inc1 turns it on).
"""
import ml_collections

from mim_jax.config.defaults import finetune_config, standalone_eval_config

ARGS = ("model=B/16", "model=L/16", "model=H/14", "demo")


def get_config(arg: str = "model=B/16") -> ml_collections.ConfigDict:
    """Fine-tuning fields (config.eval) of the recipe for `arg`, plus where the encoder and data come from."""
    if arg == "demo":
        e = finetune_config("Ti/16")
        e.update(dict(epochs=3, warmup_epochs=1, batch_size=256, base_lr=1e-3, layer_decay=0.75,
                      eval_batch_size=500, auto_augment=""))
        return standalone_eval_config("finetune", e)
    if arg not in ARGS:
        raise ValueError(f"config argument {arg!r}; use one of {ARGS}")
    return standalone_eval_config("finetune", finetune_config(arg.split("=", 1)[1]))
