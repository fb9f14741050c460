"""One evaluator interface: run(context, eval_cfg) -> result dict, keyed by `eval_cfg.type`.

Pretraining (config.evals) and the standalone CLI (python -m mim_jax.evaluate) both go through `run_evaluator`.
Frozen features are extracted once per context and shared by the linear probe, kNN and few-shot evaluators
when they ask for the same split, pooling, batch size and example count.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from mim_jax.data import pipeline, records
from mim_jax.errors import ConfigError
from mim_jax.evaluate.features import extract_features
from mim_jax.evaluate.fewshot import fewshot_accuracy
from mim_jax.evaluate.knn import knn_accuracy
from mim_jax.evaluate.linear_probe import train_linear_probe
from mim_jax.evaluate.objective_loss import run_objective_loss
from mim_jax.evaluate.reconstruction import validation_loss
from mim_jax.evaluate.whitening import whiten
from mim_jax.models.mae import MAE


@dataclasses.dataclass
class EvalContext:
    """What every evaluator may use: the model, its parameters, the dataset, the mesh; caches features."""
    model: Any                        # an MAE, or anything with an `.encoder` (evaluate.weights_file.EncoderOnly)
    params: Any                       # {'encoder'[, 'decoder']}
    dataset_dir: str
    train_split: str
    val_split: str
    mesh: Any
    rules: tuple
    seed: int
    norm_pix_loss: bool = True
    run_config: Any = None            # the pretraining run's config (objective_loss needs its objective)
    frozen: Any = None                # the objective's Frozen inputs (a teacher), if any
    frozen_params: tuple = ()         # ... and their params, as the train step gets them
    _features: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def class_names(self) -> list[str]:
        """Class names from the dataset's metadata.json."""
        return records.read_metadata(self.dataset_dir)["classes"]

    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset."""
        return pipeline.num_classes(self.dataset_dir)

    def features(self, split: str, pool: str, batch_size: int, max_examples: int | None):
        """(features [N, D], labels [N]) of `split`, computed once per (split, pool, batch, count)."""
        key = (split, pool, batch_size, max_examples)
        if key not in self._features:
            x, y = extract_features(self.model.encoder, self.params["encoder"], self.dataset_dir, split, pool=pool,
                                    batch_size=batch_size, mesh=self.mesh, rules=self.rules,
                                    max_examples=max_examples)
            self._features[key] = (x, check_labelled(y, self.num_classes, self.dataset_dir, split))
        return self._features[key]

    def train_and_val_features(self, e) -> tuple:
        """(train x, train y, val x, val y) for a feature evaluator's pool / batch / max_train_examples."""
        train_x, train_y = self.features(self.train_split, e.pool, e.feature_batch_size, e.max_train_examples or None)
        val_x, val_y = self.features(self.val_split, e.pool, e.feature_batch_size, None)
        return train_x, train_y, val_x, val_y


def check_labelled(labels: np.ndarray, num_classes: int, dataset_dir: str, split: str) -> np.ndarray:
    """`labels` if they are class ids in [0, num_classes) of a dataset with >= 2 classes, else a clear error."""
    bad = (labels < 0) | (labels >= num_classes)
    if num_classes < 2 or bad.any():
        raise ConfigError(f"dataset {dataset_dir!r} split {split!r} has no usable labels ({int(bad.sum())} of "
                          f"{len(labels)} records outside [0, {num_classes}), {num_classes} class(es) in "
                          f"metadata.json); classification evals need a labelled dataset: set data.path to one")
    return labels


def run_linear_probe(ctx: EvalContext, e) -> dict:
    """MAE-protocol linear probe on frozen features."""
    train_x, train_y, val_x, val_y = ctx.train_and_val_features(e)
    result = train_linear_probe(train_x, train_y, val_x, val_y, num_classes=ctx.num_classes, epochs=e.epochs,
                                batch_size=e.batch_size, base_lr=e.base_lr, warmup_epochs=e.warmup_epochs,
                                seed=ctx.seed)
    return {**result, "pool": e.pool}


def proxy_features(ctx: EvalContext, e) -> tuple:
    """`train_and_val_features`, PCA-whitened on the train features when the evaluator sets `whiten`."""
    train_x, train_y, val_x, val_y = ctx.train_and_val_features(e)
    if e.get("whiten", False):
        train_x, val_x = whiten(train_x, val_x, e.whiten_eps)
    return train_x, train_y, val_x, val_y


def proxy_settings(e) -> dict:
    """The feature settings a kNN / few-shot result records."""
    return {"pool": e.pool, "whiten_eps": e.whiten_eps if e.get("whiten", False) else None}


def run_knn(ctx: EvalContext, e) -> dict:
    """Weighted kNN (DINO) of val features against train features."""
    train_x, train_y, val_x, val_y = proxy_features(ctx, e)
    result = knn_accuracy(train_x, train_y, val_x, val_y, num_classes=ctx.num_classes, k=e.k,
                          temperature=e.temperature)
    return {**result, **proxy_settings(e)}


def run_fewshot(ctx: EvalContext, e) -> dict:
    """n-shot ridge classifiers on frozen features, averaged over seeds."""
    train_x, train_y, val_x, val_y = proxy_features(ctx, e)
    result = fewshot_accuracy(train_x, train_y, val_x, val_y, num_classes=ctx.num_classes, shots=tuple(e.shots),
                              seeds=tuple(e.seeds), l2=e.l2_reg, class_names=ctx.class_names)
    return {**result, **proxy_settings(e)}


def run_recon_loss(ctx: EvalContext, e) -> dict:
    """MAE loss on the val split with fixed masks."""
    if not isinstance(ctx.model, MAE) or "decoder" not in ctx.params:
        raise ConfigError("recon_loss needs the decoder, masking and loss of a pretraining run: set init_from to "
                          "a pretraining workdir (a weights file holds the encoder only)")
    return validation_loss(ctx.model, ctx.params, ctx.dataset_dir, ctx.val_split, norm_pix_loss=ctx.norm_pix_loss,
                           seed=e.mask_seed, batch_size=e.batch_size, mesh=ctx.mesh, rules=ctx.rules,
                           max_examples=e.max_examples or None)


def run_finetune(ctx: EvalContext, e) -> dict:
    """End-to-end fine-tuning of the encoder (MAE recipe), val top-1."""
    from mim_jax.evaluate.finetune import (
        finetune_encoder,  # heavy: training program, augmentation
    )
    return finetune_encoder(ctx, e)


EVALUATORS: dict[str, Callable[[EvalContext, Any], dict]] = {
    "linear_probe": run_linear_probe,
    "knn": run_knn,
    "fewshot": run_fewshot,
    "recon_loss": run_recon_loss,
    "finetune": run_finetune,
    "objective_loss": run_objective_loss,
}


def run_evaluator(ctx: EvalContext, e) -> dict:
    """Run the evaluator of `e.type`; the result also records the dataset, splits and seconds taken."""
    if e.type not in EVALUATORS:
        raise ConfigError(f"eval type={e.type!r}: use one of {sorted(EVALUATORS)}")
    start = time.perf_counter()
    result = EVALUATORS[e.type](ctx, e)
    result.update(type=e.type, dataset=ctx.dataset_dir, train_split=ctx.train_split, val_split=ctx.val_split,
                  seconds=round(time.perf_counter() - start, 1))
    return result


def headline(eval_type: str, result: dict) -> dict:
    """The scalars worth logging per evaluation (metrics.jsonl / TensorBoard)."""
    if eval_type in ("recon_loss", "objective_loss"):
        return {"loss": result["loss"]}
    if eval_type == "fewshot":
        return {k: v for k, v in result.items() if k.endswith("shot_top1")}
    return {k: result[k] for k in ("top1", "top5") if k in result}


def describe(name: str, eval_type: str, result: dict) -> str:
    """One human line: 'knn: top1 0.4120 top5 0.8810'."""
    return f"{name}: " + " ".join(f"{k} {v:.4f}" for k, v in headline(eval_type, result).items())
