"""Weakly supervised pretraining (WSP; MAWS / SWAG): encoder -> CLS -> Linear-Tanh-Linear head, soft-target CE.

Each image carries a label set L (the batch's `labels` [B, M] int32, padded with -1; a single-label dataset's
`label` [B] is a one-element set). The target is L / |L| over the classes, optionally smoothed to
(1 - eps) * L / |L| + eps / C, and the loss is the softmax cross-entropy against it. An empty label set has
target 0 (zero mass): such an image contributes nothing, and the loss is the sum of the row losses over the
number of labelled images of the batch (0 when none is). The multi-hot is built on device from the padded ids,
sharded over the class axis like the logits.

Mixup (wsp.mixup = alpha > 0; timm Mixup, batch mode: one lambda per batch, applied with probability
wsp.mixup_prob): `sample` draws lam ~ Beta(alpha, alpha) and a permutation `perm` from the step key over the
global batch; the loss mixes images lam * x + (1 - lam) * x[perm] and targets lam * T + (1 - lam) * T[perm]. With
zero-mass empty sets, a row mixing a labelled and an unlabelled image keeps only the labelled one's share of the
target, and since `perm` is a bijection the total target mass is still the number of labelled images: the loss
at lam = 1 is the unmixed loss. With optim.grad_accum_steps = A > 1 each micro-batch (rows a, a + A, ...) is
permuted within itself (a row's partner must be in the same micro-batch); the draws never depend on the mesh.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mim_jax.config.validation import require
from mim_jax.data.records import DatasetError
from mim_jax.data.sources import label_info, resolve_dataset_dir
from mim_jax.data.transforms import normalize
from mim_jax.errors import ConfigError
from mim_jax.models import flops
from mim_jax.models.heads import WSPClassifier
from mim_jax.models.vit import encoder_from_config, resolve_dims, sincos_2d
from mim_jax.objectives.base import ENCODER_EVALUATORS, Objective

POS_EMBEDS = ("learned", "sincos")
PADDING_LOGIT = -1e30  # padded class columns: exp() is 0, and 0 * log-prob stays finite (no -inf * 0)


def config_block() -> ml_collections.ConfigDict:
    """config.wsp: the label space, the target smoothing and the position table of WSP."""
    b = ml_collections.ConfigDict()
    b.num_classes = 0                 # size of the label vocabulary (MAWS: ~28K synsets); required
    b.label_smoothing = 0.0           # eps: targets (1 - eps) * L / |L| + eps / num_classes
    b.pos_embed = "learned"           # learned (MAWS, timm ViT) | sincos (MAE's fixed table)
    b.mixup = 0.0                     # mixup alpha: lam ~ Beta(alpha, alpha) per batch; 0 = off (MAWS in21k: 0.5)
    b.mixup_prob = 1.0                # probability of mixing a batch (timm mix_prob); otherwise lam = 1
    return b


def multi_hot(labels: jax.Array, num_columns: int) -> jax.Array:
    """Padded id lists [B, M] (-1 = none) -> float32 [B, num_columns] with 1 at each id (duplicates count once)."""
    hot = jnp.zeros((labels.shape[0], num_columns), jnp.float32)
    for j in range(labels.shape[1]):  # M is small and static: one fused compare per slot, no [B, M, C] tensor
        hot = jnp.maximum(hot, jax.nn.one_hot(labels[:, j], num_columns, dtype=jnp.float32))
    return hot


def label_sets(batch: dict) -> jax.Array:
    """The batch's label sets as padded ids [B, M]: `labels` when present, else `label` as one-element sets."""
    if "labels" in batch:
        return batch["labels"].astype(jnp.int32)
    return batch["label"].astype(jnp.int32)[:, None]


def label_targets(labels: jax.Array, num_columns: int, num_classes: int,
                  label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """(targets [B, num_columns], labelled [B]): (1 - eps) * L / |L| + eps / C over the first num_classes columns
    for a non-empty set, all zeros (zero mass) for an empty one; fp32."""
    valid = jnp.arange(num_columns) < num_classes
    hot = nn.with_logical_constraint(multi_hot(labels, num_columns) * valid, ("batch", "act_classes"))
    count = hot.sum(axis=-1, keepdims=True)
    labelled = (count > 0).astype(jnp.float32)
    targets = hot / jnp.maximum(count, 1.0)
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing * labelled * valid / num_classes
    return targets, labelled[:, 0]


def soft_target_cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0,
                              mix: tuple[jax.Array, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """(CE summed over rows / number of labelled rows, number of labelled rows) of logits [B, C'] (C' >= C; columns
    >= C are padding) against the normalized, smoothed label sets; `mix` = (lam, perm [B]) mixes the targets
    lam * T + (1 - lam) * T[perm] (the images must be mixed the same way); fp32."""
    logits = logits.astype(jnp.float32)
    valid = jnp.arange(logits.shape[1]) < num_classes
    log_probs = jax.nn.log_softmax(jnp.where(valid, logits, PADDING_LOGIT), axis=-1)
    targets, labelled = label_targets(labels, logits.shape[1], num_classes, label_smoothing)
    if mix is not None:
        lam, perm = mix
        partner, _ = label_targets(labels[perm], logits.shape[1], num_classes, label_smoothing)  # gathers the ids
        targets = lam * targets + (1.0 - lam) * partner
    per_row = -jnp.sum(jnp.where(valid, targets * log_probs, 0.0), axis=-1)
    n = labelled.sum()
    return jnp.sum(per_row) / jnp.maximum(n, 1.0), n


def build_model(config, unroll: bool = False) -> WSPClassifier:
    """The WSP classifier of `config`: the config.model encoder (positions by wsp.pos_embed) + the WSP head."""
    encoder = encoder_from_config(config.model, unroll=unroll).clone(positions=config.wsp.pos_embed)
    return WSPClassifier(encoder=encoder, num_classes=config.wsp.num_classes)


def init_inputs(model: WSPClassifier, config) -> tuple:
    """(images [1, S, S, 3],) for model.init."""
    size = model.encoder.image_size
    return (jnp.zeros((1, size, size, 3), jnp.float32),)


MIX_LAM_STREAM, MIX_PERM_STREAM, MIX_APPLY_STREAM = 11, 12, 13  # fold_in(step key, .) for mixup's draws


def sample(model: WSPClassifier, config, key: jax.Array, batch_size: int) -> dict:
    """Mixup's draws of one step over the global batch: {'mix_lam' [B] (one lambda, repeated so micro-batches
    split it), 'mix_perm' [B] (each row's partner, an index into its micro-batch)}; {} with mixup off."""
    alpha, prob = config.wsp.get("mixup", 0.0), config.wsp.get("mixup_prob", 1.0)
    if alpha <= 0:
        return {}
    lam = jax.random.beta(jax.random.fold_in(key, MIX_LAM_STREAM), alpha, alpha)
    applied = jax.random.uniform(jax.random.fold_in(key, MIX_APPLY_STREAM)) < prob
    lam = jnp.where(applied, lam, 1.0).astype(jnp.float32)
    return {"mix_lam": jnp.full((batch_size,), lam), "mix_perm": micro_batch_permutation(
        jax.random.fold_in(key, MIX_PERM_STREAM), batch_size, config.optim.get("grad_accum_steps", 1))}


def micro_batch_permutation(key: jax.Array, batch_size: int, micro_batches: int) -> jax.Array:
    """[B] int32: row a + A * j (micro-batch a, position j; train.step's strided split) gets a partner position
    in micro-batch a; for A = 1 a permutation of the global batch."""
    size = batch_size // micro_batches
    perms = jax.vmap(lambda a: jax.random.permutation(jax.random.fold_in(key, a), size))(jnp.arange(micro_batches))
    return perms.T.reshape(batch_size).astype(jnp.int32)  # [A, B/A] -> row j * A + a holds perms[a, j]


def mix_images(images: jax.Array, lam: jax.Array, perm: jax.Array) -> jax.Array:
    """lam * x + (1 - lam) * x[perm] of normalized images [B, H, W, 3] (fp32)."""
    return lam * images + (1.0 - lam) * images[perm]


def make_loss(model: WSPClassifier, config, frozen=None):
    """loss(params, batch, rng, frozen_params) -> (soft-target CE, {'labelled': labelled images})."""
    num_classes, eps = config.wsp.num_classes, config.wsp.label_smoothing
    drop_path = config.model.get("drop_path", 0.0) > 0

    def loss(params, batch, rng, frozen_params=None):
        kwargs = {"train": True, "rngs": {"dropout": rng}} if drop_path else {}
        images, mix = normalize(batch["image"]), None
        if "mix_lam" in batch:
            mix = (batch["mix_lam"][0], batch["mix_perm"])
            images = mix_images(images, *mix)
        logits = model.apply({"params": params}, images, **kwargs)
        value, labelled = soft_target_cross_entropy(logits, label_sets(batch), num_classes, eps, mix)
        return value, {"labelled": labelled}
    return loss


def flops_per_example(config) -> float:
    """3x the forward: the encoder on all 1+N tokens, the head's D x D and D x C matmuls on the CLS token."""
    width = resolve_dims(config.model)["width"]
    head = flops.matmul_flops(1, width, width) + flops.matmul_flops(1, config.wsp.num_classes, width)
    return 3.0 * (flops.vit_forward_flops_per_example(config.model) + head)


def validate(config, check_paths: bool = True) -> None:
    """Check config.wsp (and, with the data at hand, that the dataset has labels that fit the head)."""
    w = config.wsp
    require(isinstance(w.num_classes, int) and w.num_classes > 0, "wsp.num_classes", w.num_classes,
            "must be the size of the label vocabulary (a positive int), e.g. --config.wsp.num_classes=28000")
    require(0.0 <= w.label_smoothing < 1.0, "wsp.label_smoothing", w.label_smoothing, "must lie in [0, 1), e.g. 0.1")
    require(w.pos_embed in POS_EMBEDS, "wsp.pos_embed", w.pos_embed, f"use one of {POS_EMBEDS}")
    require(w.mixup >= 0.0, "wsp.mixup", w.mixup, "is the mixup alpha: >= 0 (0 = off), e.g. 0.5")
    require(0.0 <= w.mixup_prob <= 1.0, "wsp.mixup_prob", w.mixup_prob, "must lie in [0, 1], e.g. 1.0")
    require(config.init_from_subtree == "encoder" or not config.init_from, "init_from_subtree",
            config.init_from_subtree, "WSP loads the encoder only (the head is always fresh); use 'encoder'")
    if check_paths:
        check_dataset_labels(config)


def check_dataset_labels(config) -> None:
    """One-line ConfigErrors naming the dataset or field: no labels, more classes than the head, label sets that
    data.max_labels would drop."""
    dataset = resolve_dataset_dir(config.data)
    try:
        info = label_info(dataset, config.data.train_split)
    except DatasetError as err:
        raise ConfigError(f"objective='wsp' needs labels: {err}") from None
    if info["num_classes"] > config.wsp.num_classes:
        raise ConfigError(f"wsp.num_classes={config.wsp.num_classes} is smaller than the {info['num_classes']} "
                          f"classes of data.path={dataset!r}; set --config.wsp.num_classes={info['num_classes']}")
    if info["multi_label"] and config.data.get("max_labels", 0) == 0:
        raise ConfigError(f"data.max_labels=0 but data.path={dataset!r} has label sets (up to "
                          f"{info['max_set_size']} labels); set --config.data.max_labels={info['max_set_size']}")


def signature(config) -> dict:
    """The label space and the position table fix parameter shapes besides config.model."""
    return {"wsp": {"num_classes": config.wsp.num_classes, "pos_embed": config.wsp.pos_embed}}


def adapt_init(source: dict, config, init_from: str) -> tuple[dict, list[str]]:
    """init_from weights for a WSP model -> (weights, notes): a width check naming init_from, and a sin-cos source
    (no pos_embed) into a learned table gets the sin-cos table of this model's grid as its initial values."""
    encoder = dict(source.get("encoder", {}))
    dims = resolve_dims(config.model)
    kernel = encoder.get("patch_embed", {}).get("kernel")
    if kernel is not None and kernel.shape[-1] != dims["width"]:
        raise ConfigError(f"init_from={init_from!r}: its encoder is {kernel.shape[-1]} wide but this model is "
                          f"{dims['width']} (model.variant={config.model.variant!r}); pick the matching size")
    notes = []
    if config.wsp.pos_embed == "learned" and "pos_embed" not in encoder and kernel is not None:
        grid = config.model.image_size // dims["patch_size"]
        encoder["pos_embed"] = np.asarray(sincos_2d(dims["width"], grid))
        notes.append(f"pos_embed <- the source's fixed sin-cos table ({grid}x{grid} grid)")
    return {**source, "encoder": encoder}, notes


OBJECTIVE = Objective(
    name="wsp", build_model=build_model, init_inputs=init_inputs, sample=sample, make_loss=make_loss,
    flops_per_example=flops_per_example, validate=validate, config_blocks={"wsp": config_block},
    evaluators=ENCODER_EVALUATORS, signature=signature, adapt_init=adapt_init,
    description="WSP: CLS -> Linear-Tanh-Linear head, softmax CE against L / |L| (MAWS, Singh et al. 2023)")
