"""MAE linear-probe protocol (``main_linprobe.py``) on precomputed frozen features.

Head: BatchNorm without affine parameters (eps 1e-6, PyTorch momentum 0.1) followed by
Dense(num_classes) (kernel trunc-normal std 0.01, zero bias). Optimizer: MAE's LARS with
weight decay 0, lr = base_lr * batch / 256, per-step linear warmup then cosine to 0.

Deviations from the PyTorch reference, all deliberate or negligible:
- flax BatchNorm feeds the *biased* batch variance into its running average (PyTorch
  uses the unbiased one): a factor (B-1)/B on the running variance, 0.4% at B=256.
- ``train_top1`` is measured after training with running statistics (eval mode) on
  the whole training set, not averaged over the training batches as MAE logs it.
- If ``batch_size`` exceeds the training set, the whole set is one batch and the lr is
  scaled by that effective batch size.
- Training labels with a single class present train normally but raise a UserWarning.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Variables = dict[str, Any]

BN_MOMENTUM = 0.9  # flax convention; equals PyTorch momentum 0.1.
BN_EPSILON = 1e-6
HEAD_INIT_STD = 0.01
# timm's trunc_normal_(std=0.01) truncates at +-2 absolute, i.e. +-200 std.
HEAD_INIT_BOUND = 2.0 / HEAD_INIT_STD
LR_REFERENCE_BATCH = 256
EVAL_CHUNK = 8192


class ProbeHead(nn.Module):
    """Non-affine BatchNorm followed by a linear classifier."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Return logits; batch statistics when ``train`` else running averages."""
        x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                         epsilon=BN_EPSILON, use_scale=False, use_bias=False,
                         name='bn')(x)
        kernel_init = nn.initializers.truncated_normal(
            HEAD_INIT_STD, lower=-HEAD_INIT_BOUND, upper=HEAD_INIT_BOUND)
        return nn.Dense(self.num_classes, kernel_init=kernel_init,
                        bias_init=nn.initializers.zeros, name='head')(x)


class ProbeState(NamedTuple):
    """Training state carried through the jitted epoch."""

    params: Variables
    batch_stats: Variables
    opt_state: optax.OptState


class LinearProbe(NamedTuple):
    """A trained probe: the head, its variables and the peak lr it used."""

    model: ProbeHead
    params: Variables
    batch_stats: Variables
    lr: float


# --------------------------------------------------------------------------- optimizer


def _matrix_mask(tree: Any) -> Any:
    """True for leaves with ndim > 1 (MAE's LARS leaves biases/norm params alone)."""
    return jax.tree.map(lambda p: p.ndim > 1, tree)


def lars_optimizer(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9,
                   trust_coefficient: float = 1e-3) -> optax.GradientTransformation:
    """MAE's LARS (weight decay 0): trust ratio on ndim>1 params, momentum, then lr.

    Not ``optax.lars``: it multiplies by the learning rate *before* the momentum
    trace, so the buffer stores lr-scaled steps. MAE (PyTorch) keeps
    ``mu = m * mu + g'`` and steps ``p -= lr_t * mu``; the two agree only for a
    constant lr. The trust ratio is masked to ndim>1 as ``trust_ratio_mask`` would.
    """
    return optax.chain(
        optax.masked(optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient),
                     _matrix_mask),
        optax.trace(decay=momentum),
        optax.scale_by_learning_rate(learning_rate),
    )


def lr_schedule(peak_lr: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Per-step linear warmup from 0 to ``peak_lr``, then cosine to 0 at ``total_steps``."""
    if warmup_steps >= total_steps:  # MAE: still warming up when training ends.
        return optax.linear_schedule(0.0, peak_lr, max(warmup_steps, 1))
    return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, total_steps,
                                              end_value=0.0)


# --------------------------------------------------------------------------- validation


def _check_features(name: str, x: Any) -> np.ndarray:
    """Return ``x`` as float32 (N, D), or raise naming ``name``."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f'{name} must be 2-D (num_examples, feature_dim), got shape '
                         f'{x.shape}; pool or flatten the encoder output first.')
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f'{name} must be numeric, got dtype {x.dtype}.')
    if x.shape[0] == 0:
        raise ValueError(f'{name} is empty (0 examples); pass at least one example.')
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f'{name} contains NaN or inf; fix the feature extraction.')
    return x


def _check_labels(name: str, y: Any, num_rows: int, features_name: str,
                  num_classes: int) -> np.ndarray:
    """Return ``y`` as int32 (N,) in [0, num_classes), or raise naming ``name``."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f'{name} must be 1-D class ids, got shape {y.shape}.')
    if y.shape[0] != num_rows:
        raise ValueError(f'{name} has {y.shape[0]} labels but {features_name} has '
                         f'{num_rows} rows; pass one label per feature row.')
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f'{name} must have an integer dtype, got {y.dtype}; '
                         f'convert class ids with .astype(int).')
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f'{name} must lie in [0, num_classes={num_classes}), got '
                         f'min {y.min()} and max {y.max()}; remap the labels or raise '
                         f'num_classes.')
    return y.astype(np.int32)


def _check_hparams(num_classes: int, epochs: int, batch_size: int, base_lr: float,
                   warmup_epochs: int) -> None:
    """Raise ValueError naming the first invalid hyperparameter."""
    for name, value, low in (('num_classes', num_classes, 2), ('epochs', epochs, 1),
                             ('batch_size', batch_size, 1),
                             ('warmup_epochs', warmup_epochs, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or value < low:
            raise ValueError(f'{name} must be an integer >= {low}, got {value!r}.')
    if warmup_epochs > epochs:
        raise ValueError(f'warmup_epochs ({warmup_epochs}) must be <= epochs ({epochs}); '
                         f'lower warmup_epochs.')
    if not (np.isfinite(base_lr) and base_lr > 0):
        raise ValueError(f'base_lr must be a finite positive number, got {base_lr!r}.')


def _warn_single_class(labels: np.ndarray) -> None:
    """Warn when the training labels contain only one class."""
    present = np.unique(labels)
    if present.size == 1:
        warnings.warn(f'train_labels contain a single class ({present[0]}); the probe '
                      f'will learn to predict it everywhere.', UserWarning, stacklevel=3)


# --------------------------------------------------------------------------- training


def _train_epoch(state: ProbeState, features: jax.Array, labels: jax.Array,
                 batch_idx: jax.Array, *, model: ProbeHead,
                 tx: optax.GradientTransformation) -> tuple[ProbeState, jax.Array]:
    """Run one train step per row of ``batch_idx``; return the state and mean loss."""

    def step(state: ProbeState, idx: jax.Array) -> tuple[ProbeState, jax.Array]:
        x, y = features[idx], labels[idx]

        def loss_fn(params: Variables) -> tuple[jax.Array, Variables]:
            logits, new_vars = model.apply(
                {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
                mutable=['batch_stats'])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, new_vars['batch_stats']

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return ProbeState(params, batch_stats, opt_state), loss

    state, losses = jax.lax.scan(step, state, batch_idx)
    return state, losses.mean()


def fit_linear_probe(train_features: np.ndarray, train_labels: np.ndarray, *,
                     num_classes: int, epochs: int = 90, batch_size: int = 256,
                     base_lr: float = 0.1, warmup_epochs: int = 10,
                     seed: int = 0) -> LinearProbe:
    """Train the BatchNorm + linear head with MAE's LARS recipe and return it."""
    _check_hparams(num_classes, epochs, batch_size, base_lr, warmup_epochs)
    x = _check_features('train_features', train_features)
    y = _check_labels('train_labels', train_labels, x.shape[0], 'train_features',
                      num_classes)
    _warn_single_class(y)
    num_train = x.shape[0]
    batch = min(batch_size, num_train)
    steps_per_epoch = num_train // batch
    lr = base_lr * batch / LR_REFERENCE_BATCH
    tx = lars_optimizer(lr_schedule(lr, warmup_epochs * steps_per_epoch,
                                    epochs * steps_per_epoch))
    model = ProbeHead(num_classes)
    init_fn = jax.jit(model.init, static_argnames='train')  # One compile, not op-by-op.
    variables = init_fn(jax.random.key(seed), jnp.zeros((1, x.shape[1])), train=False)
    state = ProbeState(variables['params'], variables['batch_stats'],
                       tx.init(variables['params']))
    epoch_fn = jax.jit(functools.partial(_train_epoch, model=model, tx=tx))
    x_dev, y_dev = jnp.asarray(x), jnp.asarray(y)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(num_train)[:steps_per_epoch * batch]
        state, _ = epoch_fn(state, x_dev, y_dev, order.reshape(steps_per_epoch, batch))
    return LinearProbe(model, state.params, state.batch_stats, lr)


# --------------------------------------------------------------------------- evaluation


def _topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Boolean per example: label among the k largest logits (ties: lower index wins)."""
    _, top = jax.lax.top_k(logits, k)
    return jnp.any(top == labels[:, None], axis=1)


def topk_accuracy(logits: Any, labels: Any, k: int) -> float:
    """Fraction of rows whose label is among the k highest logits."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f'logits must be (N, C) and labels (N,), got {logits.shape} '
                         f'and {labels.shape}.')
    if not 1 <= k <= logits.shape[1]:
        raise ValueError(f'k must be in [1, {logits.shape[1]}] (number of classes), '
                         f'got {k}.')
    return float(np.mean(_topk_correct(jnp.asarray(logits), jnp.asarray(labels), k)))


@functools.partial(jax.jit, static_argnames=('model', 'k'))
def _correct_counts(variables: Variables, x: jax.Array, y: jax.Array, *,
                    model: ProbeHead, k: int) -> tuple[jax.Array, jax.Array]:
    """Top-1 and top-k correct counts for one chunk (padding rows carry label -1)."""
    logits = model.apply(variables, x, train=False)
    return _topk_correct(logits, y, 1).sum(), _topk_correct(logits, y, k).sum()


def evaluate_linear_probe(probe: LinearProbe, features: np.ndarray,
                          labels: np.ndarray) -> dict[str, float]:
    """Top-1 and top-min(5, C) accuracy of ``probe`` using running BN statistics."""
    x = _check_features('features', features)
    y = _check_labels('labels', labels, x.shape[0], 'features', probe.model.num_classes)
    k = min(5, probe.model.num_classes)
    variables = {'params': probe.params, 'batch_stats': probe.batch_stats}
    chunk = min(EVAL_CHUNK, x.shape[0])
    top1 = topk = 0
    for start in range(0, x.shape[0], chunk):
        xc, yc = x[start:start + chunk], y[start:start + chunk]
        pad = chunk - xc.shape[0]  # Pad the last chunk so there is one compilation.
        xc = np.pad(xc, ((0, pad), (0, 0)))
        yc = np.pad(yc, (0, pad), constant_values=-1)
        c1, ck = _correct_counts(variables, xc, yc, model=probe.model, k=k)
        top1, topk = top1 + int(c1), topk + int(ck)
    return {'top1': top1 / x.shape[0], 'top5': topk / x.shape[0]}


def train_linear_probe(train_features: np.ndarray, train_labels: np.ndarray,
                       val_features: np.ndarray, val_labels: np.ndarray, *,
                       num_classes: int, epochs: int = 90, batch_size: int = 256,
                       base_lr: float = 0.1, warmup_epochs: int = 10,
                       seed: int = 0) -> dict[str, float | int]:
    """Train the MAE linear probe on frozen features and report val/train accuracy."""
    _check_hparams(num_classes, epochs, batch_size, base_lr, warmup_epochs)
    vx = _check_features('val_features', val_features)
    vy = _check_labels('val_labels', val_labels, vx.shape[0], 'val_features', num_classes)
    tdim = np.shape(train_features)[-1] if np.ndim(train_features) == 2 else None
    if tdim is not None and tdim != vx.shape[1]:
        raise ValueError(f'val_features has dim {vx.shape[1]} but train_features has dim '
                         f'{tdim}; extract both with the same encoder and pooling.')
    probe = fit_linear_probe(train_features, train_labels, num_classes=num_classes,
                             epochs=epochs, batch_size=batch_size, base_lr=base_lr,
                             warmup_epochs=warmup_epochs, seed=seed)
    val = evaluate_linear_probe(probe, vx, vy)
    train = evaluate_linear_probe(probe, train_features, train_labels)
    return {'top1': val['top1'], 'top5': val['top5'], 'train_top1': train['top1'],
            'epochs': epochs, 'lr': probe.lr, 'num_train': int(np.shape(train_labels)[0]),
            'num_val': int(vx.shape[0])}
