"""Weighted k-nearest-neighbour classification on frozen features, as in DINO (Caron et al. 2021, eval_knn.py).

Features are l2-normalized; each test point takes its k most cosine-similar training points, weights
each by exp(similarity / T) and sums the weights per class. Defaults k=20, T=0.07 are DINO's.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mim_jax.errors import ConfigError
from mim_jax.evaluate.linear_probe import topk_accuracy

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07
TEST_CHUNK = 1024


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows divided by their l2 norm (zero rows stay zero)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _class_scores(bank: jax.Array, bank_labels: jax.Array, queries: jax.Array, temperature: float, *,
                  k: int, num_classes: int) -> jax.Array:
    """[Q, C] summed exp(sim / T) votes of the k nearest (cosine) bank rows of each query."""
    sims = l2_normalize(queries) @ bank.T
    top_sims, top_ids = jax.lax.top_k(sims, k)
    weights = jnp.exp(top_sims / temperature)
    votes = jax.nn.one_hot(bank_labels[top_ids], num_classes, dtype=weights.dtype)
    return jnp.einsum("qk,qkc->qc", weights, votes)


def knn_scores(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, *,
               num_classes: int, k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """[N_test, num_classes] temperature-weighted kNN votes (DINO) of every test row."""
    if not 1 <= k <= len(train_features):
        raise ConfigError(f"knn.k={k}: must lie in [1, {len(train_features)}] (the number of training features); "
                          f"lower knn.k or raise knn.max_train_examples")
    if not temperature > 0:
        raise ConfigError(f"knn.temperature={temperature}: must be > 0, e.g. 0.07")
    bank = l2_normalize(jnp.asarray(train_features, jnp.float32))
    bank_labels = jnp.asarray(train_labels, jnp.int32)
    test = np.asarray(test_features, np.float32)
    chunk = min(TEST_CHUNK, len(test))
    scores = []
    for start in range(0, len(test), chunk):
        part = test[start:start + chunk]
        padded = np.pad(part, ((0, chunk - len(part)), (0, 0)))  # one compilation for every chunk
        out = _class_scores(bank, bank_labels, padded, temperature, k=k, num_classes=num_classes)
        scores.append(np.asarray(out)[:len(part)])
    return np.concatenate(scores)


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
                 test_labels: np.ndarray, *, num_classes: int, k: int = DEFAULT_K,
                 temperature: float = DEFAULT_TEMPERATURE) -> dict:
    """Top-1 and top-min(5, C) accuracy of the weighted kNN classifier on the test rows."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes=num_classes, k=k,
                        temperature=temperature)
    return {"top1": topk_accuracy(scores, test_labels, 1),
            "top5": topk_accuracy(scores, test_labels, min(5, num_classes)),
            "k": k, "temperature": temperature, "num_train": len(train_features), "num_val": len(test_features)}
