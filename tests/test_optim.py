"""AdamW with MAE's decay mask and the warmup + cosine schedule against closed forms."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.config.defaults import base_config
from mim_jax.train import optim


def optim_cfg(**kw):
    c = base_config().optim
    c.update(kw)
    return c


def test_schedule_warmup_then_cosine():
    cfg = optim_cfg(base_lr=1.5e-4, warmup_steps=10, min_lr=0.0)
    sched = optim.learning_rate_schedule(cfg, 512, 110)
    peak = 1.5e-4 * 512 / 256
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(peak * 5 / 10)
    assert float(sched(10)) == pytest.approx(peak)
    for step in (30, 60, 109):
        expected = 0.5 * peak * (1 + math.cos(math.pi * (step - 10) / 100))
        assert float(sched(step)) == pytest.approx(expected, abs=peak * 1e-6)


def test_step_schedule_drops_the_peak_for_the_last_eighth():
    """Xie et al.: linear warmup, the peak held, x0.1 from 7/8 of training on (closed form at every step)."""
    cfg = optim_cfg(base_lr=4e-4, warmup_steps=5, schedule="step", step_decay_at=0.875, step_decay_factor=0.1)
    sched = optim.learning_rate_schedule(cfg, 256, 80)
    peak = 4e-4
    for step in range(80):
        expected = peak * step / 5 if step < 5 else (peak if step < 70 else 0.1 * peak)
        assert float(sched(step)) == pytest.approx(expected, rel=1e-6, abs=1e-12), step


def test_weight_decay_mask_by_name():
    params = {"encoder": {"blocks": {"layers": {"fc1": {"kernel": jnp.ones((2, 3, 4)), "bias": jnp.ones((2, 4))},
                                                "norm1": {"scale": jnp.ones((2, 3)), "bias": jnp.ones((2, 3))}}},
                          "cls_token": jnp.ones((1, 1, 3))}}
    mask = optim.weight_decay_mask(params)
    layers = mask["encoder"]["blocks"]["layers"]
    assert layers["fc1"]["kernel"] and not layers["fc1"]["bias"]
    assert not layers["norm1"]["scale"] and not layers["norm1"]["bias"]
    assert mask["encoder"]["cls_token"]


@pytest.mark.slow
def test_adamw_update_matches_numpy():
    cfg = optim_cfg(base_lr=0.256, warmup_steps=0, weight_decay=0.05, b1=0.9, b2=0.95)
    tx = optim.make_optimizer(cfg, 256, 1000)  # lr at step 0 = 0.256 (cosine starts at peak)
    params = {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([0.5])}
    grads = {"kernel": jnp.array([[0.1, 0.3]]), "bias": jnp.array([-0.2])}
    updates, _ = tx.update(grads, tx.init(params), params)
    lr = 0.256
    for name, decay in (("kernel", 0.05), ("bias", 0.0)):
        g, p = np.asarray(grads[name], np.float64), np.asarray(params[name], np.float64)
        m_hat, v_hat = g, g * g  # bias-corrected first step
        expected = -lr * (m_hat / (np.sqrt(v_hat) + 1e-8) + decay * p)
        np.testing.assert_allclose(np.asarray(updates[name]), expected, rtol=1e-5)


@pytest.mark.slow
def test_grad_clip_option():
    cfg = optim_cfg(grad_clip_norm=1.0, warmup_steps=0, weight_decay=0.0)
    params = {"kernel": jnp.ones((2, 2))}
    sched = optim.learning_rate_schedule(cfg, 256, 10)

    def second_update(tx):
        state = tx.init(params)
        _, state = tx.update({"kernel": jnp.full((2, 2), 100.0)}, state, params)  # norm 200 -> clipped to 0.5 each
        update, _ = tx.update({"kernel": jnp.full((2, 2), 0.5)}, state, params)
        return np.asarray(update["kernel"])

    # Clipped, both gradients are 0.5 everywhere, so Adam's normalized step is exactly 1 (up to eps).
    np.testing.assert_allclose(second_update(optim.make_optimizer(cfg, 256, 10)), -float(sched(1)), rtol=1e-5)
    unclipped = second_update(optim.make_optimizer(optim_cfg(warmup_steps=0, weight_decay=0.0), 256, 10))
    assert not np.allclose(unclipped, -float(sched(1)), rtol=1e-2)
