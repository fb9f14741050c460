"""End-to-end fine-tuning of a pretrained encoder with the MAE recipe (He et al. 2022, main_finetune.py).

Model: the encoder without its final norm, average pool of the patch tokens, fc_norm (LayerNorm), linear head
(trunc-normal std 2e-5). Training: AdamW with layer-wise lr decay, per-step warmup + cosine to min_lr, drop path
(stochastic depth), mixup / cutmix with label smoothing and random erasing on device (timm semantics, batch mode),
optional EMA of the weights. Host side (the train pipeline): RandomResizedCrop(crop_scale) + flip, then RandAugment
(`auto_augment`, timm spec; MAE: rand-m9-mstd0.5-inc1; `mim_jax.data.randaugment`).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from mim_jax.data import pipeline
from mim_jax.data.transforms import normalize
from mim_jax.errors import ConfigError
from mim_jax.models.vit import Encoder, layer_norm, partitioned
from mim_jax.parallel.sharding import (
    global_batch,
    replicated,
    sharding_context,
    state_shardings,
)
from mim_jax.train import optim

HEAD_INIT_STD = 2e-5
ERASE_AREA = (0.02, 1 / 3)
ERASE_LOG_ASPECT = (math.log(0.3), math.log(1 / 0.3))
CPU_SYNC_EVERY = 10


class Classifier(nn.Module):
    """Encoder (no final norm) -> mean of patch tokens (all tokens without a CLS) -> fc_norm -> linear head."""
    encoder: Encoder
    num_classes: int

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        """[B, H, W, 3] normalized images -> [B, num_classes] float32 logits."""
        tokens = self.encoder(images, train=train)
        patches = tokens[:, getattr(self.encoder, "prefix_tokens", 1):]
        pooled = layer_norm(jnp.float32, "fc_norm")(patches.mean(axis=1).astype(jnp.float32))
        head_init = nn.initializers.truncated_normal(HEAD_INIT_STD, lower=-2.0 / HEAD_INIT_STD,
                                                     upper=2.0 / HEAD_INIT_STD)  # timm: cut at +-2 absolute
        return nn.Dense(self.num_classes, name="head", kernel_init=partitioned(head_init, ("embed", "classes")),
                        bias_init=partitioned(nn.initializers.zeros, ("classes",)))(pooled)


# --------------------------------------------------------------------------- mixup / cutmix / erasing
# The random draws (as timm makes them, on the host) come from numpy keyed by (seed, step): compiling
# jax.random.beta into the step costs minutes on CPU. The device applies them to the normalized batch.


def cutmix_box(rng: np.random.Generator, lam: float, height: int, width: int) -> tuple[np.ndarray, float]:
    """timm rand_bbox + correct_lam: box (y0, y1, x0, x1) of area ~ (1 - lam), and lam = 1 - box area."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return np.array([y0, y1, x0, x1], np.int32), 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def sample_mix(rng: np.random.Generator, e, height: int, width: int) -> dict:
    """timm Mixup (mode 'batch', prob 1) draws: {'lam', 'is_cut', 'box'}; lam = 1 (no mixing) when both are off."""
    use_cut = e.cutmix_alpha > 0 and (e.mixup_alpha <= 0 or rng.random() < e.mixup_switch_prob)
    box, lam = np.zeros(4, np.int32), 1.0
    if use_cut:
        box, lam = cutmix_box(rng, rng.beta(e.cutmix_alpha, e.cutmix_alpha), height, width)
    elif e.mixup_alpha > 0:
        lam = rng.beta(e.mixup_alpha, e.mixup_alpha)
    return {"lam": np.float32(lam), "is_cut": np.bool_(use_cut), "box": box}


def sample_erase(rng: np.random.Generator, batch: int, height: int, width: int, prob: float) -> np.ndarray:
    """timm RandomErasing (one box, up to 10 tries) boxes [batch, 4] = (top, left, h, w); h = 0: not erased."""
    boxes = np.zeros((batch, 4), np.int32)
    for i in range(batch):
        if rng.random() >= prob:
            continue
        for _ in range(10):
            area = rng.uniform(*ERASE_AREA) * height * width
            aspect = math.exp(rng.uniform(*ERASE_LOG_ASPECT))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                boxes[i] = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w
                break
    return boxes


def sample_augmentation(seed: int, step: int, e, batch: int, height: int, width: int) -> dict:
    """All host-side draws of train step `step` (the same on every process)."""
    rng = np.random.default_rng([seed, step])
    return {**sample_mix(rng, e, height, width), "erase": sample_erase(rng, batch, height, width,
                                                                       e.random_erase_prob)}


def mix_batch(images: jax.Array, labels: jax.Array, aug: dict, num_classes: int,
              smoothing: float) -> tuple[jax.Array, jax.Array]:
    """Mix each image with the batch reversed (cutmix box or mixup blend by aug['lam']); smoothed soft targets."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    flipped, lam = images[::-1], aug["lam"]
    y0, y1, x0, x1 = aug["box"]
    rows, cols = jnp.arange(images.shape[1])[:, None], jnp.arange(images.shape[2])[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    cut = jnp.where(box[None, :, :, None], flipped, images)
    images = jnp.where(aug["is_cut"], cut, lam * images + (1.0 - lam) * flipped)
    return images, lam * targets + (1.0 - lam) * targets[::-1]


def random_erase(rng: jax.Array, images: jax.Array, boxes: jax.Array) -> jax.Array:
    """Fill each image's box (top, left, h, w) with N(0, 1) noise (timm mode 'pixel', normalized space)."""
    top, left, h, w = (boxes[:, i, None, None] for i in range(4))
    rows, cols = jnp.arange(images.shape[1])[None, :, None], jnp.arange(images.shape[2])[None, None, :]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
    return jnp.where(inside[..., None], jax.random.normal(rng, images.shape, images.dtype), images)


# --------------------------------------------------------------------------- state, step, eval


class FinetuneState(train_state.TrainState):
    """TrainState plus an EMA of the parameters (a copy of params when EMA is off)."""
    ema_params: Any = None


def classifier_for(encoder: Encoder, num_classes: int, drop_path: float, image_size: int = 0,
                   window_size: int = 0) -> Classifier:
    """The fine-tuning model around a (pretraining) encoder definition, optionally at a new image / window size
    (SwinV2: the CPB stays normalized by the pretraining windows, e.g. 192 px / window 12 -> 224 px / window 14)."""
    if image_size or window_size:
        if not hasattr(encoder, "at_resolution"):
            raise ConfigError(f"eval.image_size={image_size} / eval.window_size={window_size}: only a SwinV2 "
                              f"encoder fine-tunes at a new size here; leave both at 0 for this encoder")
        encoder = encoder.at_resolution(image_size or encoder.image_size, window_size or encoder.window_size)
    return Classifier(encoder.clone(drop_path_rate=drop_path, final_norm=False, parent=None), num_classes)


def init_state(model: Classifier, tx: optax.GradientTransformation, encoder_params, mesh, rules,
               seed: int) -> FinetuneState:
    """Sharded state: fresh fc_norm/head, the encoder from `encoder_params` (its final norm dropped)."""
    size = model.encoder.image_size

    def init(rng):
        params = model.init({"params": rng}, jnp.zeros((1, size, size, 3)))["params"]
        return FinetuneState.create(apply_fn=model.apply, params=params, tx=tx, ema_params=params)

    rng = jax.random.key(seed)
    with sharding_context(mesh, rules):
        _, shardings = state_shardings(init, mesh, rules, rng)
        fresh = jax.jit(lambda r: nn.unbox(init(r)), out_shardings=shardings)(rng)
    missing = set(fresh.params["encoder"]) - set(encoder_params)
    if missing:
        raise ConfigError(f"init_from: the encoder weights lack {sorted(missing)}; they do not belong to this model")
    encoder = {k: encoder_params[k] for k in fresh.params["encoder"]}
    params = {**fresh.params, "encoder": encoder}

    def load(p):
        return FinetuneState.create(apply_fn=model.apply, params=p, tx=tx, ema_params=p)
    with sharding_context(mesh, rules):
        return jax.block_until_ready(jax.jit(load, out_shardings=shardings)(params))


def make_train_step(model: Classifier, e, schedule: optax.Schedule, seed: int, mesh, rules):
    """jit(state, batch, aug) -> (state, metrics): mixup/cutmix, erasing, drop path, soft-target CE, EMA."""
    def step(state: FinetuneState, batch: dict, aug: dict):
        k_erase, k_drop = jax.random.split(jax.random.fold_in(jax.random.key(seed), state.step))
        images, targets = mix_batch(normalize(batch["image"]), batch["label"], aug, model.num_classes,
                                    e.label_smoothing)
        images = random_erase(k_erase, images, aug["erase"])

        def loss_fn(params):
            logits = model.apply({"params": params}, images, train=True, rngs={"dropout": k_drop})
            return optax.softmax_cross_entropy(logits, targets).mean()
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        new = state.apply_gradients(grads=grads)
        if e.ema_decay > 0:
            new = new.replace(ema_params=optax.incremental_update(new.params, state.ema_params, 1 - e.ema_decay))
        return new, {"loss": loss, "lr": schedule(state.step)}

    jitted = jax.jit(step, out_shardings=(None, replicated(mesh)), donate_argnums=0)

    def run(state, batch, aug):
        with sharding_context(mesh, rules):
            return jitted(state, batch, aug)
    return run


def make_eval_fn(model: Classifier, mesh, rules):
    """jit(params, batch) -> (top-1 correct, top-5 correct, real examples), padding rows ignored."""
    k = min(5, model.num_classes)

    def counts(params, batch):
        logits = model.apply({"params": params}, normalize(batch["image"]))
        mask = batch["mask"]
        _, top = jax.lax.top_k(logits, k)
        hit = top == batch["label"][:, None]
        return jnp.sum(hit[:, 0] & mask), jnp.sum(hit.any(axis=1) & mask), jnp.sum(mask)

    jitted = jax.jit(counts, out_shardings=replicated(mesh))

    def run(params, batch):
        with sharding_context(mesh, rules):
            return jitted(params, batch)
    return run


def evaluate_classifier(eval_fn, params, dataset_dir: str, split: str, batch_size: int, image_size: int,
                        mesh, rules) -> dict:
    """Top-1 / top-5 over the whole split."""
    top1 = top5 = total = 0
    for local in pipeline.eval_batches(dataset_dir, split, batch_size=batch_size, image_size=image_size,
                                       process_index=jax.process_index(), process_count=jax.process_count()):
        c1, c5, n = jax.device_get(eval_fn(params, global_batch(local, mesh, rules)))
        top1, top5, total = top1 + int(c1), top5 + int(c5), total + int(n)
    return {"top1": top1 / total, "top5": top5 / total, "num_val": total}


# --------------------------------------------------------------------------- driver


def schedule_for(e, num_train: int) -> tuple[optax.Schedule, int, int]:
    """(lr schedule, steps per epoch, total steps): lr = base_lr * batch / 256, warmup then cosine to min_lr."""
    steps_per_epoch = num_train // e.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"finetune.batch_size={e.batch_size} exceeds the {num_train} training examples; "
                          f"lower finetune.batch_size")
    total, warmup = e.epochs * steps_per_epoch, e.warmup_epochs * steps_per_epoch
    peak = e.base_lr * e.batch_size / 256
    schedule = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1), end_value=e.min_lr)
    return schedule, steps_per_epoch, total


def finetune_encoder(ctx, e) -> dict:
    """Fine-tune ctx's encoder on ctx's train split with recipe `e`; val top-1/top-5 (and of the EMA weights)."""
    num_train = pipeline.num_examples(ctx.dataset_dir, ctx.train_split)
    model = classifier_for(ctx.model.encoder, ctx.num_classes, e.drop_path, e.get("image_size", 0),
                           e.get("window_size", 0))
    schedule, steps_per_epoch, total = schedule_for(e, num_train)
    abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros(
        (1, model.encoder.image_size, model.encoder.image_size, 3)))["params"]))
    tx = optim.finetune_optimizer(schedule, optim.encoder_layer_decay_scales(abstract, model.encoder, e.layer_decay),
                                  e.b1, e.b2, e.weight_decay)
    state = init_state(model, tx, ctx.params["encoder"], ctx.mesh, ctx.rules, ctx.seed)
    train_step = make_train_step(model, e, schedule, ctx.seed, ctx.mesh, ctx.rules)
    batches = finetune_batches(ctx, e, model.encoder.image_size)
    losses = []
    size = model.encoder.image_size
    for step in range(1, total + 1):
        aug = sample_augmentation(ctx.seed, step, e, e.batch_size, size, size)
        state, metrics = train_step(state, global_batch(next(batches), ctx.mesh, ctx.rules), aug)
        if step % steps_per_epoch == 0 or step % CPU_SYNC_EVERY == 0:
            losses.append(float(jax.device_get(metrics["loss"])))
        if step % steps_per_epoch == 0 and jax.process_index() == 0:
            print(f"finetune epoch {step // steps_per_epoch}/{e.epochs} | step {step}/{total} | "
                  f"loss {losses[-1]:.4f}", flush=True)
    eval_fn = make_eval_fn(model, ctx.mesh, ctx.rules)
    evaluate = functools.partial(evaluate_classifier, eval_fn, dataset_dir=ctx.dataset_dir, split=ctx.val_split,
                                 batch_size=e.eval_batch_size, image_size=model.encoder.image_size, mesh=ctx.mesh,
                                 rules=ctx.rules)
    result = {**evaluate(state.params), "epochs": e.epochs, "steps": total, "num_train": num_train,
              "lr": float(e.base_lr * e.batch_size / 256), "layer_decay": e.layer_decay, "drop_path": e.drop_path,
              "final_train_loss": losses[-1] if losses else None}
    if e.ema_decay > 0:
        ema = evaluate(state.ema_params)
        result.update(ema_top1=ema["top1"], ema_top5=ema["top5"])
    return result


def finetune_batches(ctx, e, image_size: int):
    """This process's slices of the augmented train batches (RandomResizedCrop(crop_scale), flip, RandAugment)."""
    return pipeline.train_batches(ctx.dataset_dir, ctx.train_split, global_batch_size=e.batch_size,
                                  image_size=image_size, seed=ctx.seed, process_index=jax.process_index(),
                                  process_count=jax.process_count(), crop_scale=tuple(e.crop_scale),
                                  num_workers=e.num_workers, auto_augment=e.auto_augment)
