"""Patchify order, norm-pix targets and the masked MSE against numpy float64 references."""
import jax
import numpy as np
import pytest

from mim_jax.objectives import targets as objectives


def reference_patchify(images, p):
    b, h, w, c = images.shape
    out = np.zeros((b, (h // p) * (w // p), p * p * c))
    for n in range(b):
        for i in range(h // p):
            for j in range(w // p):
                patch = images[n, i * p:(i + 1) * p, j * p:(j + 1) * p, :]  # (row, col, channel)
                out[n, i * (w // p) + j] = patch.reshape(-1)
    return out


def test_patchify_matches_loop_and_round_trips():
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 3))
    patches = np.asarray(objectives.patchify(x, 4))
    np.testing.assert_allclose(patches, reference_patchify(x, 4))
    np.testing.assert_allclose(np.asarray(objectives.unpatchify(patches, 4)), x)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_matches_numpy_float64(norm_pix):
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
    pred = rng.normal(size=(3, 16, 4 * 4 * 3)).astype(np.float32)
    mask = (rng.uniform(size=(3, 16)) < 0.75).astype(np.float32)
    target = reference_patchify(images.astype(np.float64), 4)
    if norm_pix:
        mean = target.mean(-1, keepdims=True)
        var = target.var(-1, ddof=1, keepdims=True)
        target = (target - mean) / np.sqrt(var + 1e-6)
    per_patch = ((pred.astype(np.float64) - target) ** 2).mean(-1)
    expected = (per_patch * mask).sum() / mask.sum()
    got = objectives.mae_pixel_loss({"pred": pred, "mask": mask}, images, 4, norm_pix)
    assert float(got) == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_loss_ignores_visible_patches():
    rng = np.random.default_rng(2)
    images = rng.normal(size=(1, 8, 8, 3)).astype(np.float32)
    pred = rng.normal(size=(1, 4, 48)).astype(np.float32)
    mask = np.array([[1, 0, 1, 0]], np.float32)
    base = float(objectives.mae_pixel_loss({"pred": pred, "mask": mask}, images, 4, True))
    pred2 = pred.copy()
    pred2[0, 1] += 100.0
    assert float(objectives.mae_pixel_loss({"pred": pred2, "mask": mask}, images, 4, True)) == base
    grads = jax.grad(lambda p: objectives.mae_pixel_loss({"pred": p, "mask": mask}, images, 4, True))(pred)
    assert np.all(np.asarray(grads)[0, [1, 3]] == 0) and np.any(np.asarray(grads)[0, [0, 2]] != 0)
