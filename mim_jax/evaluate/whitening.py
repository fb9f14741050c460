"""PCA whitening of frozen features for the kNN and few-shot proxies (`whiten=True`).

Fitted on the training features only (the kNN bank, or the unlabelled train features the shots are drawn from):
centre on their mean, rotate onto the eigenvectors of their covariance, divide each direction by
sqrt(eigenvalue + eps * largest eigenvalue). With eps -> 0 the training features get identity covariance, so a
few high-variance directions (colour, background) no longer dominate cosine neighbourhoods; the linear probe gets
a similar invariance from its BatchNorm. eps = 1e-4 was chosen on a held-out part of the demo's train split.
"""
from __future__ import annotations

import numpy as np

from mim_jax.errors import ConfigError

DEFAULT_EPS = 1e-4


def fit_whitening(train: np.ndarray, eps: float = DEFAULT_EPS) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], W [D, D]) in float64 such that (x - mean) @ W whitens `train` [N, D] (eigenvalues floored)."""
    if not eps > 0:
        raise ConfigError(f"whiten_eps={eps}: must be > 0, e.g. {DEFAULT_EPS}")
    if len(train) < 2:
        raise ConfigError(f"whitening needs >= 2 training features, got {len(train)}")
    x = np.asarray(train, np.float64)
    mean = x.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x - mean, rowvar=False))
    floor = eps * max(float(eigenvalues.max()), np.finfo(np.float64).tiny)
    return mean, eigenvectors / np.sqrt(np.clip(eigenvalues, 0.0, None) + floor)


def whiten(train: np.ndarray, test: np.ndarray, eps: float = DEFAULT_EPS) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) features whitened with the transform fitted on `train`, as float32."""
    mean, w = fit_whitening(train, eps)
    return (((np.asarray(train, np.float64) - mean) @ w).astype(np.float32),
            ((np.asarray(test, np.float64) - mean) @ w).astype(np.float32))
