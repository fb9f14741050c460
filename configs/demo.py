"""The quickstart run: a small MAE on the embedded 'shapes' dataset, ~6 minutes of pretraining on 2 CPU cores, the
validation reconstruction loss every 100 steps, then a linear probe, kNN and few-shot evaluation of the pretrained
encoder next to the same encoder at random init (one feature extraction per model serves all three).

Usage: python -m mim_jax.pretrain --config=configs/demo.py --workdir=workdirs/demo
       python -m mim_jax.pretrain --config=configs/demo.py:patch8 --workdir=workdirs/demo_patch8
The patch8 variant (patch 8, batch 128, 800 steps; ~3x the compute) learns features on which kNN and few-shot
also separate clearly from random init (docs/evaluation.md).
"""
import ml_collections

from mim_jax.config.defaults import base_config


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    """Tiny MAE (width 192, depth 4, patch 16; `patch8`: patch 8) at 64 px on generated shapes; evals included."""
    c = shared_config()
    c.mae.decoder = ml_collections.ConfigDict(dict(width=128, depth=2, heads=4, mlp_ratio=4))
    c.evals.val_loss.every_steps = 100
    c.evals.val_loss.max_examples = 1000
    if arg == "patch8":  # 64 tokens instead of 16: finer features, ~3x the compute per image
        c.model.patch_size = 8
        c.data.global_batch_size = 128
        c.total_steps = 800
    elif arg:
        raise ValueError(f"configs/demo.py:{arg}: unknown argument; use configs/demo.py or configs/demo.py:patch8")
    return c


def shared_config() -> ml_collections.ConfigDict:
    """What every demo shares, whatever its objective: model, data, optimizer, schedule and evaluators."""
    c = base_config()
    c.total_steps = 500
    c.model.variant = "Ti/16"
    c.model.depth = 4
    c.model.image_size = 64
    c.model.dtype = "float32"

    c.data.source = "synthetic"
    c.data.global_batch_size = 256
    c.data.crop_scale = (0.35, 1.0)

    # MAE's blr 1.5e-4 is tuned for batch 4096 (lr 2.4e-3) and 800 epochs; at batch 256 and a few
    # minutes of training the linear scaling rule starves the model, so the demo scales up 10x.
    c.optim.base_lr = 1.5e-3
    c.optim.warmup_steps = 30

    c.ckpt.every_steps = 200
    c.log.every_steps = 20

    probe = c.evals.linear_probe
    probe.at_end = True
    probe.random_init_baseline = True
    probe.pool = "mean"
    probe.epochs = 40
    probe.warmup_epochs = 5
    probe.batch_size = 256
    # MAE probes at batch 16384 with lr 6.4 (blr 0.1); with LARS the step size follows lr, so at batch
    # 256 the demo keeps a comparable lr instead of the linearly scaled 0.1.
    probe.base_lr = 10.0
    probe.max_train_examples = 10_000

    for name in ("knn", "fewshot"):  # same features as the probe: extracted once per model
        proxy = c.evals[name]
        # Whitened: on raw cosine geometry this small MAE's features sit near chance for both encoders, their
        # variance being mostly colour and background (docs/evaluation.md).
        proxy.update(dict(at_end=True, random_init_baseline=True, pool=probe.pool, whiten=True,
                          max_train_examples=probe.max_train_examples, feature_batch_size=probe.feature_batch_size))

    return c
