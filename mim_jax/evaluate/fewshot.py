"""Few-shot linear classification on frozen features: closed-form ridge regression to +-1 one-hot targets.

As big_vision's few-shot evaluator: n examples per class are drawn from the training features (one draw per
seed), a ridge regressor maps features to targets 2 * one_hot - 1, and the class with the largest output wins.
Ours l2-normalizes the features and fits an unpenalized intercept (features and targets centred on the shots).
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.errors import ConfigError
from mim_jax.evaluate.knn import l2_normalize

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_L2 = 1.0


def sample_shots(labels: np.ndarray, shots: int, seed: int, num_classes: int,
                 class_names: Sequence[str] | None = None) -> np.ndarray:
    """Indices of `shots` examples of every class, drawn without replacement by (seed, shots)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, shots])
    picked = []
    for c in range(num_classes):
        ids = np.flatnonzero(labels == c)
        if len(ids) < shots:
            name = f" ({class_names[c]!r})" if class_names is not None else ""
            raise ConfigError(f"fewshot.shots: {shots}-shot needs {shots} training examples per class but class "
                              f"{c}{name} has only {len(ids)} (of {len(labels)} training features); lower "
                              f"fewshot.shots or raise fewshot.max_train_examples")
        picked.append(rng.choice(ids, shots, replace=False))
    return np.concatenate(picked)


@jax.jit
def ridge_fit(x: jax.Array, targets: jax.Array, l2: float) -> tuple[jax.Array, jax.Array]:
    """(W, b) minimizing |x W + b - targets|^2 + l2 |W|^2; solved in the smaller of the primal / dual forms."""
    x_mean, t_mean = x.mean(axis=0), targets.mean(axis=0)
    xc, tc = x - x_mean, targets - t_mean
    n, d = x.shape
    if n >= d:
        w = jnp.linalg.solve(xc.T @ xc + l2 * jnp.eye(d, dtype=x.dtype), xc.T @ tc)
    else:
        w = xc.T @ jnp.linalg.solve(xc @ xc.T + l2 * jnp.eye(n, dtype=x.dtype), tc)
    return w, t_mean - x_mean @ w


def pm_one_hot(labels: np.ndarray, num_classes: int) -> jax.Array:
    """+1 at the label, -1 elsewhere."""
    return 2.0 * jax.nn.one_hot(jnp.asarray(labels), num_classes, dtype=jnp.float32) - 1.0


def fewshot_scores(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, *,
                   num_classes: int, l2: float = DEFAULT_L2) -> np.ndarray:
    """[N_test, C] ridge outputs for a classifier fitted on all given training rows."""
    x = l2_normalize(jnp.asarray(train_features, jnp.float32))
    w, b = ridge_fit(x, pm_one_hot(train_labels, num_classes), l2)
    return np.asarray(l2_normalize(jnp.asarray(test_features, jnp.float32)) @ w + b)


def fewshot_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                     test_labels: np.ndarray, *, num_classes: int, shots: Sequence[int] = DEFAULT_SHOTS,
                     seeds: Sequence[int] = DEFAULT_SEEDS, l2: float = DEFAULT_L2,
                     class_names: Sequence[str] | None = None) -> dict:
    """Top-1 on the test rows of n-shot ridge classifiers, averaged over seeds: {'<n>shot_top1': ...}."""
    if not seeds:
        raise ConfigError("fewshot.seeds is empty; pass at least one seed, e.g. (0, 1, 2)")
    if not l2 > 0:
        raise ConfigError(f"fewshot.l2_reg={l2}: must be > 0, e.g. 1.0")
    test_labels = np.asarray(test_labels)
    result = {"seeds": list(seeds), "l2_reg": l2, "num_val": len(test_labels)}
    for n in shots:
        accs = []
        for seed in seeds:
            ids = sample_shots(train_labels, n, seed, num_classes, class_names)
            scores = fewshot_scores(train_features[ids], train_labels[ids], test_features, num_classes=num_classes,
                                    l2=l2)
            accs.append(float(np.mean(scores.argmax(axis=1) == test_labels)))
        result[f"{n}shot_top1"] = float(np.mean(accs))
        result[f"{n}shot_top1_std"] = float(np.std(accs))
        result[f"{n}shot_top1_per_seed"] = accs
    return result
