"""PCA whitening for the kNN / few-shot proxies, against float64 formulas and an invariance property."""
import ml_collections
import numpy as np
import pytest

from mim_jax.config.defaults import fewshot_config, knn_config
from mim_jax.config.validation import validate_eval
from mim_jax.errors import ConfigError
from mim_jax.evaluate import evaluators
from mim_jax.evaluate.knn import knn_accuracy
from mim_jax.evaluate.whitening import fit_whitening, whiten


def correlated_features(n=600, d=12, seed=0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.geomspace(10, 0.1, d)[:, None]
    return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d) * 5


def test_whitened_train_features_have_identity_covariance():
    x = correlated_features()
    train, _ = whiten(x, x[:5], eps=1e-12)
    np.testing.assert_allclose(np.cov(train.astype(np.float64), rowvar=False), np.eye(12), atol=1e-4)
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-4)


def test_eigenvalue_floor_follows_the_formula():
    """Direction with eigenvalue l ends with variance l / (l + eps * l_max)."""
    x = correlated_features()
    eps = 1e-2
    eigenvalues = np.linalg.eigvalsh(np.cov(x, rowvar=False))
    expected = np.sort(eigenvalues / (eigenvalues + eps * eigenvalues.max()))
    mean, w = fit_whitening(x, eps)
    got = np.sort(np.linalg.eigvalsh(np.cov((x - mean) @ w, rowvar=False)))
    np.testing.assert_allclose(got, expected, rtol=1e-8)


@pytest.mark.slow
def test_knn_on_whitened_features_ignores_an_invertible_linear_map():
    """Whitening undoes any invertible linear map of the features, so the neighbours do not change."""
    rng = np.random.default_rng(1)
    x, labels = correlated_features(700), rng.integers(0, 4, size=700)
    x[:, 0] += 3 * labels  # some class signal
    mixed = x @ (rng.normal(size=(12, 12)) + 3 * np.eye(12))
    results = []
    for feats in (x, mixed):
        train, test = whiten(feats[:500], feats[500:], eps=1e-12)
        results.append(knn_accuracy(train, labels[:500], test, labels[500:], num_classes=4, k=10)["top1"])
    assert results[0] == results[1]
    raw = [knn_accuracy(f[:500], labels[:500], f[500:], labels[500:], num_classes=4, k=10)["top1"] for f in (x, mixed)]
    assert raw[0] != raw[1]  # without whitening the map matters


class FixedFeatures:
    """An EvalContext stand-in holding fixed train / val features."""
    num_classes = 4
    class_names = ["a", "b", "c", "d"]

    def __init__(self, seed=2):
        rng = np.random.default_rng(seed)
        self.y = rng.integers(0, 4, size=400)
        self.x = (correlated_features(400, seed=seed) + 2 * np.eye(12)[self.y]).astype(np.float32)

    def train_and_val_features(self, e):
        return self.x[:300], self.y[:300], self.x[300:], self.y[300:]


@pytest.mark.slow
def test_evaluators_whiten_on_the_train_features_only():
    ctx = FixedFeatures()
    e = knn_config()
    e.update(dict(k=5, whiten=True, whiten_eps=1e-3))
    got = evaluators.run_knn(ctx, e)
    train, val = whiten(ctx.x[:300], ctx.x[300:], 1e-3)
    assert got["top1"] == knn_accuracy(train, ctx.y[:300], val, ctx.y[300:], num_classes=4, k=5)["top1"]
    assert got["whiten_eps"] == 1e-3
    f = fewshot_config()
    f.update(dict(shots=(5,), whiten=False))
    assert evaluators.run_fewshot(ctx, f)["whiten_eps"] is None


@pytest.mark.parametrize("value", [0.0, -1e-4])
def test_bad_whitening_eps_names_the_field(value):
    e = ml_collections.ConfigDict(knn_config().to_dict())
    e.whiten_eps = value
    with pytest.raises(ConfigError, match=f"evals.knn.whiten_eps={value}: must be a positive number"):
        validate_eval(e, "evals.knn")


def test_too_few_features_is_a_clear_error():
    with pytest.raises(ConfigError, match="whitening needs >= 2 training features, got 1"):
        fit_whitening(np.ones((1, 3)))
