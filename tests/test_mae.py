"""MAE: masking invariants, decoder unshuffle, and the model output against the encoder run by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mim_jax.config.defaults import base_config
from mim_jax.models import mae
from mim_jax.objectives.mae import build_mae


def small_mae(mask_ratio=0.75):
    c = base_config()
    c.model.update(dict(variant="Ti/16", width=64, depth=2, heads=4, mlp_dim=128, image_size=32, patch_size=8,
                        dtype="float32"))
    c.mae.mask_ratio = mask_ratio
    c.mae.decoder.update(dict(width=32, depth=1, heads=2, mlp_ratio=2))
    return build_mae(c)


@pytest.mark.slow
@pytest.mark.parametrize("length,ratio", [(16, 0.75), (196, 0.75), (10, 0.5), (7, 0.9)])
def test_random_masking_invariants(length, ratio):
    noise = jax.random.uniform(jax.random.key(0), (3, length))
    out = mae.random_masking(noise, ratio)
    num_keep = int(length * (1 - ratio))
    assert out["keep_ids"].shape == (3, num_keep)
    mask = np.asarray(out["mask"])
    np.testing.assert_array_equal(mask.sum(1), length - num_keep)
    shuffle = np.argsort(np.asarray(noise), axis=1)
    # restore_ids inverts the shuffle: shuffle[restore] is the identity.
    np.testing.assert_array_equal(np.take_along_axis(shuffle, np.asarray(out["restore_ids"]), 1),
                                  np.tile(np.arange(length), (3, 1)))
    # Kept tokens are the lowest-noise ones and carry mask 0 (1 = removed).
    for b in range(3):
        kept = np.asarray(out["keep_ids"][b])
        assert set(kept) == set(np.argsort(np.asarray(noise[b]))[:num_keep])
        assert np.all(mask[b, kept] == 0)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_mask_ratio_out_of_range(ratio):
    with pytest.raises(ValueError, match="model.mask_ratio"):
        mae.random_masking(jnp.zeros((1, 4)), ratio)


@pytest.mark.slow
def test_mae_forward_shapes_and_encoder_sees_only_visible_tokens():
    model = small_mae()
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    noise = jax.random.uniform(jax.random.key(2), (2, 16))
    variables = jax.jit(model.init)(jax.random.key(0), x, noise)
    out = jax.jit(model.apply)(variables, x, noise)
    assert out["pred"].shape == (2, 16, 8 * 8 * 3)
    assert out["mask"].shape == (2, 16)
    # Changing a masked patch's pixels must not change any prediction (the encoder never sees it);
    # changing a visible patch must.
    masked = int(np.argmax(np.asarray(out["mask"][0])))
    visible = int(np.argmin(np.asarray(out["mask"][0])))
    def bump(patch):
        r, c = divmod(patch, 4)
        return x.at[0, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8].add(5.0)
    np.testing.assert_allclose(model.apply(variables, bump(masked), noise)["pred"], out["pred"], atol=1e-5)
    assert not np.allclose(model.apply(variables, bump(visible), noise)["pred"][0], out["pred"][0], atol=1e-3)


@pytest.mark.slow
def test_restore_ids_put_visible_tokens_back_in_place():
    # The decoder appends mask tokens to the visible ones and gathers with restore_ids: each visible
    # token must land at its original patch position, mask tokens everywhere else.
    noise = jnp.array([[0.9, 0.1, 0.5, 0.3]])
    m = mae.random_masking(noise, 0.5)
    visible = jnp.array([[[10.0], [20.0]]])  # tokens for keep_ids [1, 3]
    fill = jnp.zeros((1, 2, 1))
    unshuffled = jnp.take_along_axis(jnp.concatenate([visible, fill], 1), m["restore_ids"][..., None], 1)
    np.testing.assert_array_equal(np.asarray(m["keep_ids"]), [[1, 3]])
    np.testing.assert_array_equal(np.asarray(unshuffled[0, :, 0]), [0.0, 10.0, 0.0, 20.0])
