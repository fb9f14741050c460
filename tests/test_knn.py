"""kNN (DINO) against a float64 numpy reference, and its errors."""
import numpy as np
import pytest

from mim_jax.errors import ConfigError
from mim_jax.evaluate import knn


def knn_reference(train_x, train_y, test_x, num_classes, k, temperature):
    """DINO eval_knn.knn_classifier in float64: cosine top-k, exp(sim / T) votes summed per class."""
    bank = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    queries = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sims = queries.astype(np.float64) @ bank.T.astype(np.float64)
    scores = np.zeros((len(test_x), num_classes))
    for q in range(len(test_x)):
        nearest = np.argsort(-sims[q])[:k]
        for j in nearest:
            scores[q, train_y[j]] += np.exp(sims[q, j] / temperature)
    return scores


def clusters(seed, n_train=300, n_test=120, num_classes=6, dim=16):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, dim))
    y = rng.integers(0, num_classes, n_train + n_test)
    x = (centers[y] + 1.2 * rng.normal(size=(len(y), dim))) * rng.uniform(0.5, 3.0, (len(y), 1))  # scale-free
    return x[:n_train].astype(np.float32), y[:n_train], x[n_train:].astype(np.float32), y[n_train:]


@pytest.mark.parametrize("k,temperature", [(20, 0.07), (7, 0.5)])
def test_scores_match_float64_reference(monkeypatch, k, temperature):
    monkeypatch.setattr(knn, "TEST_CHUNK", 50)  # 120 queries: two full chunks and a padded one
    train_x, train_y, test_x, _ = clusters(0)
    ours = knn.knn_scores(train_x, train_y, test_x, num_classes=6, k=k, temperature=temperature)
    ref = knn_reference(train_x, train_y, test_x, 6, k, temperature)
    np.testing.assert_allclose(ours, ref, rtol=2e-4)
    np.testing.assert_array_equal(ours.argmax(1), ref.argmax(1))


def test_accuracy_matches_reference_and_beats_chance():
    train_x, train_y, test_x, test_y = clusters(1)
    result = knn.knn_accuracy(train_x, train_y, test_x, test_y, num_classes=6)
    ref = knn_reference(train_x, train_y, test_x, 6, 20, 0.07)
    assert result["top1"] == pytest.approx(np.mean(ref.argmax(1) == test_y))
    top5 = np.argsort(-ref, axis=1, kind="stable")[:, :5]  # zero-vote ties: lower class id first
    assert result["top5"] == pytest.approx(np.mean((top5 == test_y[:, None]).any(1)))
    assert result["top1"] > 0.5  # chance is 1/6
    assert (result["k"], result["num_train"], result["num_val"]) == (20, 300, 120)


def test_k_larger_than_bank_is_a_clear_error():
    train_x, train_y, test_x, _ = clusters(2, n_train=10)
    with pytest.raises(ConfigError, match=r"knn.k=20: must lie in \[1, 10\]"):
        knn.knn_scores(train_x, train_y, test_x, num_classes=6)
