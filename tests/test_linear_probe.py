"""Tests for mim_jax.evaluate.linear_probe against float64 numpy references."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mim_jax.evaluate import linear_probe as lp

# --------------------------------------------------------------------------- references


def mae_lars_reference(params: dict, grads_per_step: list[dict], lrs: list[float],
                       momentum: float = 0.9, trust: float = 1e-3) -> list[dict]:
    """MAE's LARS.step() (weight decay 0) in float64; returns params after each step."""
    p = {k: v.astype(np.float64).copy() for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in p.items()}
    history = []
    for grads, lr in zip(grads_per_step, lrs):
        for k in p:
            dp = grads[k].astype(np.float64)
            if p[k].ndim > 1:
                pn, gn = np.linalg.norm(p[k]), np.linalg.norm(dp)
                if pn > 0 and gn > 0:
                    dp = dp * (trust * pn / gn)
            mu[k] = momentum * mu[k] + dp
            p[k] = p[k] - lr * mu[k]
        history.append({k: v.copy() for k, v in p.items()})
    return history


def mae_lr_reference(step: int, steps_per_epoch: int, lr: float, epochs: int,
                     warmup_epochs: int) -> float:
    """MAE util/lr_sched.adjust_learning_rate at a fractional epoch."""
    epoch = step / steps_per_epoch
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs)
                                      / (epochs - warmup_epochs)))


def logistic_regression_reference(x_train: np.ndarray, y_train: np.ndarray,
                                  x_val: np.ndarray, num_classes: int,
                                  l2: float = 1e-4) -> np.ndarray:
    """Val predictions of a Newton-solved float64 softmax regression on standardized x."""
    mean, std = x_train.mean(0), x_train.std(0)

    def design(x: np.ndarray) -> np.ndarray:
        return np.hstack([(x.astype(np.float64) - mean) / std, np.ones((len(x), 1))])

    xa, n, c = design(x_train), len(x_train), num_classes
    d = xa.shape[1]
    w, onehot = np.zeros((d, c)), np.eye(c)[y_train]
    for _ in range(50):
        logits = xa @ w
        prob = np.exp(logits - logits.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        grad = xa.T @ (prob - onehot) / n + l2 * w
        if np.abs(grad).max() < 1e-10:
            break
        hess = np.zeros((d, c, d, c))
        for a in range(c):
            for b in range(c):
                weight = prob[:, a] * ((a == b) - prob[:, b])
                hess[:, a, :, b] = (xa * weight[:, None]).T @ xa / n
        hess = hess.reshape(d * c, d * c) + l2 * np.eye(d * c)
        w -= np.linalg.solve(hess, grad.reshape(-1)).reshape(d, c)
    assert np.abs(grad).max() < 1e-10, 'reference logistic regression did not converge'
    return np.argmax(design(x_val) @ w, axis=1)


def gaussian_classes(seed: int, num_train: int = 3000, num_val: int = 2000,
                     num_classes: int = 5, dim: int = 32, separation: float = 0.35):
    """Overlapping Gaussian classes, then a per-dimension affine distortion."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dim)) * separation
    y = rng.integers(0, num_classes, num_train + num_val)
    z = means[y] + rng.normal(size=(len(y), dim))
    x = (z * rng.uniform(0.5, 3.0, dim) + rng.normal(0.0, 5.0, dim)).astype(np.float32)
    return x[:num_train], y[:num_train], x[num_train:], y[num_train:]


# --------------------------------------------------------------------------- optimizer


def _two_steps(tx: optax.GradientTransformation, params: dict, grads: list[dict]):
    """Apply two updates; return the per-step updates and params after each step."""
    state = tx.init(params)
    updates_seen, params_seen = [], []
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        updates_seen.append(updates)
        params_seen.append(params)
    return updates_seen, params_seen


def _lars_problem(seed: int = 0):
    """Kernel, bias and an all-zero matrix (trust-ratio fallback), with two grads each."""
    rng = np.random.default_rng(seed)
    shapes = {'kernel': (6, 4), 'bias': (4,), 'zero_kernel': (3, 2)}
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    params['zero_kernel'][:] = 0.0
    grads = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
             for _ in range(2)]
    return params, grads


@pytest.mark.slow
def test_lars_matches_mae_reference_over_two_steps_with_changing_lr():
    params, grads = _lars_problem()
    lrs = [0.3, 0.7]
    schedule = lambda count: jnp.where(count == 0, lrs[0], lrs[1])
    updates, after = _two_steps(lp.lars_optimizer(schedule), params, grads)
    ref = mae_lars_reference(params, grads, lrs)
    for step in range(2):
        prev = params if step == 0 else ref[step - 1]
        for k in params:
            np.testing.assert_allclose(after[step][k], ref[step][k], atol=1e-6, rtol=0)
            np.testing.assert_allclose(updates[step][k], ref[step][k] - prev[k],
                                       rtol=1e-5, atol=1e-9)
    # The bias got no trust ratio: its first update is exactly -lr * g.
    np.testing.assert_allclose(updates[0]['bias'], -0.3 * grads[0]['bias'], rtol=1e-6)


def test_lars_equals_masked_optax_lars_only_for_constant_lr():
    params, grads = _lars_problem(seed=1)
    mask = lambda tree: jax.tree.map(lambda p: p.ndim > 1, tree)
    ours = _two_steps(lp.lars_optimizer(0.5), params, grads)[1][1]
    theirs = _two_steps(optax.lars(0.5, trust_ratio_mask=mask), params, grads)[1][1]
    for k in params:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-6, atol=1e-7)
    # optax.lars scales by lr before its momentum trace, so a schedule changes the result.
    schedule = lambda count: jnp.where(count == 0, 0.1, 1.0)
    ours = _two_steps(lp.lars_optimizer(schedule), params, grads)[1][1]
    theirs = _two_steps(optax.lars(schedule, trust_ratio_mask=mask), params, grads)[1][1]
    assert np.abs(ours['bias'] - theirs['bias']).max() > 1e-2


@pytest.mark.parametrize('steps_per_epoch,epochs,warmup', [(7, 5, 2), (3, 4, 0), (5, 3, 3)])
def test_lr_schedule_matches_mae_adjust_learning_rate(steps_per_epoch, epochs, warmup):
    schedule = lp.lr_schedule(0.4, warmup * steps_per_epoch, epochs * steps_per_epoch)
    steps = np.arange(epochs * steps_per_epoch)
    ours = np.array([float(schedule(s)) for s in steps])
    ref = [mae_lr_reference(s, steps_per_epoch, 0.4, epochs, warmup) for s in steps]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- probe


@pytest.mark.slow
def test_probe_matches_float64_logistic_regression():
    x_tr, y_tr, x_va, y_va = gaussian_classes(seed=0)
    # lr = 12.8 * 128 / 256 = 6.4, MAE's ImageNet lr (0.1 * 16384 / 256).
    result = lp.train_linear_probe(x_tr, y_tr, x_va, y_va, num_classes=5, epochs=30,
                                   batch_size=128, base_lr=12.8, warmup_epochs=3)
    ref_top1 = float(np.mean(logistic_regression_reference(x_tr, y_tr, x_va, 5) == y_va))
    assert ref_top1 > 0.6  # Chance is 0.2; the data is learnable but not trivial.
    assert abs(result['top1'] - ref_top1) < 0.02, (result, ref_top1)
    assert result['top1'] > 0.6
    assert result['top5'] == 1.0  # 5 classes: top-5 covers every class.
    assert result['train_top1'] > 0.6
    assert result['lr'] == pytest.approx(6.4)
    assert (result['epochs'], result['num_train'], result['num_val']) == (30, 3000, 2000)


@pytest.mark.slow
def test_probe_is_reproducible_for_a_seed():
    x_tr, y_tr, x_va, y_va = gaussian_classes(seed=3, num_train=600, num_val=200)
    kwargs = dict(num_classes=5, epochs=3, batch_size=64, base_lr=12.8, warmup_epochs=1)
    first = lp.fit_linear_probe(x_tr, y_tr, seed=7, **kwargs)
    again = lp.fit_linear_probe(x_tr, y_tr, seed=7, **kwargs)
    np.testing.assert_array_equal(first.params['head']['kernel'],
                                  again.params['head']['kernel'])


@pytest.mark.slow
def test_head_has_only_dense_params_and_mae_init():
    model = lp.ProbeHead(num_classes=1000)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 384)), train=False)
    paths = {jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_leaves_with_path(variables['params'])}
    assert paths == {"['head']['bias']", "['head']['kernel']"}
    kernel = np.asarray(variables['params']['head']['kernel'])
    assert kernel.shape == (384, 1000)
    np.testing.assert_array_equal(variables['params']['head']['bias'], np.zeros(1000))
    # timm trunc_normal_(std=0.01) cuts at +-2 absolute: effectively N(0, 0.01^2),
    # whereas jax's default truncated_normal(0.01) cuts at +-2 std (std 0.0088).
    assert kernel.std() == pytest.approx(0.01, rel=0.01)
    assert np.abs(kernel).max() > 0.03
    stats = variables['batch_stats']['bn']
    np.testing.assert_array_equal(stats['mean'], np.zeros(384))
    np.testing.assert_array_equal(stats['var'], np.ones(384))


@pytest.mark.slow
def test_one_full_batch_step_updates_running_stats_with_pytorch_momentum():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(100, 8)) * 3.0 + 2.0).astype(np.float32)
    y = rng.integers(0, 3, 100)
    # batch_size > examples: the whole set is one batch, and the lr scales with it.
    probe = lp.fit_linear_probe(x, y, num_classes=3, epochs=1, batch_size=1000,
                                base_lr=0.1, warmup_epochs=0)
    stats = probe.batch_stats['bn']
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(stats['mean'], 0.1 * x64.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * x64.var(0), rtol=1e-5)
    assert probe.lr == pytest.approx(0.1 * 100 / 256)


@pytest.mark.slow
def test_running_stats_after_training_match_feature_moments():
    rng = np.random.default_rng(1)
    scale, shift = rng.uniform(0.5, 4.0, 16), rng.normal(0.0, 5.0, 16)
    x = (rng.normal(size=(4096, 16)) * scale + shift).astype(np.float32)
    y = rng.integers(0, 4, 4096)
    probe = lp.fit_linear_probe(x, y, num_classes=4, epochs=5, batch_size=256,
                                base_lr=1.0, warmup_epochs=1)
    stats = probe.batch_stats['bn']
    x64 = x.astype(np.float64)
    mean_error_in_stds = (stats['mean'] - x64.mean(0)) / x64.std(0)
    np.testing.assert_allclose(mean_error_in_stds, np.zeros(16), atol=0.1)
    np.testing.assert_allclose(stats['var'], x64.var(0), rtol=0.1)


# --------------------------------------------------------------------------- top-k


def test_topk_accuracy_on_hand_built_logits():
    logits = np.array([[0.1, 0.9, 0.3, 0.2, 0.0, -1.0],   # label 1: rank 1
                       [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],    # label 2: rank 3
                       [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],    # label 0: rank 6
                       [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])   # ties: lower index first
    labels = np.array([1, 2, 0, 4])
    assert lp.topk_accuracy(logits, labels, 1) == pytest.approx(1 / 4)
    assert lp.topk_accuracy(logits, labels, 3) == pytest.approx(2 / 4)
    assert lp.topk_accuracy(logits, labels, 5) == pytest.approx(3 / 4)
    assert lp.topk_accuracy(logits, labels, 6) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r'k must be in \[1, 6\]'):
        lp.topk_accuracy(logits, labels, 7)


@pytest.mark.slow
def test_top5_falls_back_to_all_classes_when_fewer_than_five():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(64, 4)).astype(np.float32), rng.integers(0, 3, 64)
    result = lp.train_linear_probe(x, y, x, y, num_classes=3, epochs=1, batch_size=32,
                                   warmup_epochs=0)
    assert result['top5'] == 1.0
    assert result['top1'] < 1.0


# --------------------------------------------------------------------------- errors


def _good_inputs():
    rng = np.random.default_rng(0)
    return dict(train_features=rng.normal(size=(20, 4)).astype(np.float32),
                train_labels=np.arange(20) % 3,
                val_features=rng.normal(size=(10, 4)).astype(np.float32),
                val_labels=np.arange(10) % 3)


@pytest.mark.parametrize('change,message', [
    (dict(train_labels=np.arange(20) % 4),
     r'train_labels must lie in \[0, num_classes=3\), got min 0 and max 3'),
    (dict(val_labels=-(np.arange(10) % 3)), r'val_labels must lie in \[0, num_classes=3\)'),
    (dict(train_labels=np.arange(19) % 3), 'train_labels has 19 labels but train_features '
                                           'has 20 rows'),
    (dict(val_labels=np.arange(11) % 3), 'val_labels has 11 labels but val_features'),
    (dict(train_features=np.zeros((0, 4)), train_labels=np.zeros(0, int)),
     'train_features is empty'),
    (dict(train_features=np.zeros((20, 2, 2))), 'train_features must be 2-D'),
    (dict(val_features=np.zeros(10)), 'val_features must be 2-D'),
    (dict(val_features=np.zeros((10, 5))), 'val_features has dim 5 but train_features '
                                           'has dim 4'),
    (dict(train_labels=(np.arange(20) % 3).astype(float)), 'train_labels must have an '
                                                            'integer dtype'),
    (dict(train_features=np.full((20, 4), np.nan)), 'train_features contains NaN'),
])
def test_bad_inputs_raise_naming_the_argument(change, message):
    inputs = {**_good_inputs(), **change}
    with pytest.raises(ValueError, match=message):
        lp.train_linear_probe(**inputs, num_classes=3, epochs=2, warmup_epochs=1)


@pytest.mark.parametrize('change,message', [
    (dict(num_classes=1), 'num_classes must be an integer >= 2'),
    (dict(epochs=0), 'epochs must be an integer >= 1'),
    (dict(batch_size=0), 'batch_size must be an integer >= 1'),
    (dict(warmup_epochs=3), r'warmup_epochs \(3\) must be <= epochs \(2\)'),
    (dict(base_lr=-1.0), 'base_lr must be a finite positive number'),
])
def test_bad_hyperparameters_raise_naming_the_argument(change, message):
    kwargs = {**dict(num_classes=3, epochs=2, warmup_epochs=1), **change}
    with pytest.raises(ValueError, match=message):
        lp.train_linear_probe(**_good_inputs(), **kwargs)


@pytest.mark.slow
def test_single_class_labels_warn_but_train():
    inputs = _good_inputs()
    inputs['train_labels'] = np.zeros(20, int)
    with pytest.warns(UserWarning, match='single class'):
        result = lp.train_linear_probe(**inputs, num_classes=3, epochs=5, batch_size=8,
                                       base_lr=10.0, warmup_epochs=0)
    assert result['train_top1'] == 1.0
