"""Few-shot ridge against a float64 numpy solve; shot sampling and its errors."""
import numpy as np
import pytest

from mim_jax.errors import ConfigError
from mim_jax.evaluate import fewshot


def ridge_reference(x, targets, l2):
    """float64 ridge with an unpenalized bias column: argmin |[x 1] [W; b] - t|^2 + l2 |W|^2."""
    xa = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    penalty = l2 * np.eye(xa.shape[1])
    penalty[-1, -1] = 0.0
    wb = np.linalg.solve(xa.T @ xa + penalty, xa.T @ targets)
    return wb[:-1], wb[-1]


@pytest.mark.parametrize("n,d", [(12, 40), (80, 10)])  # dual (n < d) and primal (n >= d) forms
def test_ridge_fit_matches_float64_solve(n, d):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    targets = np.asarray(fewshot.pm_one_hot(rng.integers(0, 4, n), 4))
    w, b = fewshot.ridge_fit(x, targets, 0.5)
    w_ref, b_ref = ridge_reference(x, targets, 0.5)
    np.testing.assert_allclose(w, w_ref, atol=2e-5)
    np.testing.assert_allclose(b, b_ref, atol=2e-5)


def test_sample_shots_draws_n_per_class_reproducibly():
    labels = np.repeat(np.arange(4), [7, 9, 5, 12])
    ids = fewshot.sample_shots(labels, 5, seed=3, num_classes=4)
    assert np.bincount(labels[ids], minlength=4).tolist() == [5, 5, 5, 5]
    assert len(set(ids.tolist())) == 20
    np.testing.assert_array_equal(ids, fewshot.sample_shots(labels, 5, seed=3, num_classes=4))
    assert not np.array_equal(ids, fewshot.sample_shots(labels, 5, seed=4, num_classes=4))


@pytest.mark.slow
def test_more_shots_than_examples_names_the_class_and_count():
    labels = np.repeat(np.arange(3), [30, 4, 30])
    with pytest.raises(ConfigError, match=r"10-shot needs 10 training examples per class but class 1 \('square'\) "
                                          r"has only 4 \(of 64 training features\)"):
        fewshot.fewshot_accuracy(np.zeros((64, 8)), labels, np.zeros((5, 8)), np.zeros(5, int), num_classes=3,
                                 shots=(1, 10), class_names=["disk", "square", "star"])


@pytest.mark.slow
def test_accuracy_equals_reference_pipeline():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 24))
    y = rng.integers(0, 5, 700)
    x = (centers[y] + rng.normal(size=(700, 24))).astype(np.float32)
    train_x, train_y, test_x, test_y = x[:500], y[:500], x[500:], y[500:]
    result = fewshot.fewshot_accuracy(train_x, train_y, test_x, test_y, num_classes=5, shots=(1, 10), seeds=(0, 1),
                                      l2=0.3)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    for n in (1, 10):
        accs = []
        for seed in (0, 1):
            ids = fewshot.sample_shots(train_y, n, seed, 5)
            w, b = ridge_reference(unit(train_x[ids]), 2.0 * np.eye(5)[train_y[ids]] - 1.0, 0.3)
            accs.append(np.mean((unit(test_x) @ w + b).argmax(1) == test_y))
        assert result[f"{n}shot_top1"] == pytest.approx(np.mean(accs))
        assert result[f"{n}shot_top1_per_seed"] == pytest.approx(accs)
    assert result["10shot_top1"] > 0.6 and result["10shot_top1"] > result["1shot_top1"]  # chance 0.2
