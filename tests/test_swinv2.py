"""SwinV2 encoder: parameter counts vs Xie et al. Table 1, parity with HF Swinv2Model / Swinv2ForMaskedImageModeling
(random weights, fp32, same bool_masked_pos) at 192 px / window 12 and after a window change, and the pieces
(log-spaced CPB coordinates, shift mask, geometry errors) against their formulas."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Swinv2Config, Swinv2ForMaskedImageModeling, Swinv2Model

from mim_jax.convert import swinv2_weights
from mim_jax.errors import ConfigError
from mim_jax.models import swinv2
from mim_jax.models.simmim import SimMIM

# Xie et al. 2023, Table 1 (millions of parameters).
TABLE1 = {"swinv2_s": 49, "swinv2_b": 87, "swinv2_l": 195, "swinv2_h": 655, "swinv2_g": 1061}


def abstract_count(encoder, size):
    shapes = jax.eval_shape(lambda: nn.unbox(encoder.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("variant", sorted(TABLE1))
def test_param_counts_match_table1(variant):
    s = swinv2.SWINV2_SIZES[variant]
    assert s.depths == (2, 2, 18, 2) and s.heads == tuple(h * s.embed_dim // 96 for h in (3, 6, 12, 24))
    n = abstract_count(swinv2.SwinV2Encoder(s.embed_dim, s.depths, s.heads, 192, window_size=12), 192)
    assert abs(n / 1e6 - TABLE1[variant]) / TABLE1[variant] < 0.01


def test_param_count_matches_hf_swinv2_s():
    """transformers' Swinv2Config(192 px, window 12, 96, [2,2,18,2], [3,6,12,24]) has 48.96M params: ours equal."""
    hf = Swinv2Model(Swinv2Config(image_size=192, window_size=12, embed_dim=96, depths=[2, 2, 18, 2],
                                  num_heads=[3, 6, 12, 24]), add_pooling_layer=False)
    s = swinv2.SWINV2_SIZES["swinv2_s"]
    ours = abstract_count(swinv2.SwinV2Encoder(s.embed_dim, s.depths, s.heads, 192, window_size=12), 192)
    assert ours == sum(p.numel() for p in hf.parameters())


def test_cpb_coordinates_follow_the_log_spacing_formula():
    """sign(x) log2(1 + 8|x| / (W_pre - 1)) / 3, in float64, for the window and the pretrained window."""
    for window, pre in ((4, 0), (7, 6), (14, 12)):
        table = swinv2.relative_coords_table(window, pre).reshape(2 * window - 1, 2 * window - 1, 2)
        d = np.arange(-(window - 1), window, dtype=np.float64) / ((pre or window) - 1) * 8
        expect = np.sign(d) * np.log2(1 + np.abs(d)) / 3
        np.testing.assert_allclose(table[:, 0, 0], expect, rtol=1e-6)
        np.testing.assert_allclose(table[0, :, 1], expect, rtol=1e-6)


def test_shift_mask_separates_the_regions_of_a_shifted_window():
    """Grid 8, window 4, shift 2: the last window row/col mixes regions; tokens of different regions get -100."""
    mask = swinv2.shift_mask(8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert not mask[0].any()  # the top-left window lies in one region
    # window 1 (top-right): columns 0-1 of the window are region 1, columns 2-3 region 2 (after the roll)
    cols = np.arange(16) % 4
    expect = np.where((cols[:, None] >= 2) != (cols[None, :] >= 2), -100.0, 0.0)
    np.testing.assert_array_equal(mask[1], expect)


@pytest.mark.parametrize("size,window,message", [
    (190, 12, "model.image_size=190: must be a positive multiple of the patch size 4"),
    (160, 12, "model.image_size=160: stage 1's 40x40 grid is not divisible by model.window_size=12"),
    (224, 12, "model.image_size=224: stage 1's 56x56 grid is not divisible by model.window_size=12"),
])
def test_image_sizes_the_windows_do_not_tile_are_refused(size, window, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        swinv2.stage_geometry(size, 4, window, 4)


def test_a_stage_no_larger_than_the_window_uses_the_whole_grid_unshifted():
    """192 px / window 12: grids 48, 24, 12, 6 -> windows 12, 12, 12, 6 and shifts 6, 6, 0, 0 (so 192 is valid)."""
    assert swinv2.stage_geometry(192, 4, 12, 4) == [(48, 12, 6), (24, 12, 6), (12, 12, 0), (6, 6, 0)]
    assert swinv2.stage_geometry(224, 4, 14, 4) == [(56, 14, 7), (28, 14, 7), (14, 14, 0), (7, 7, 0)]


def test_heads_that_do_not_divide_a_stage_width_are_refused():
    with pytest.raises(ConfigError, match=r"model.heads: stage 1 has width 100 .* and 3 heads"):
        swinv2.check_heads(100, (3, 6, 12, 24))


# --------------------------------------------------------------------------- HF parity

SMALL = {"embed_dim": 32, "depths": [2, 2, 2, 2], "num_heads": [2, 4, 8, 16]}


def hf_config(image_size, window, pretrained=(0, 0, 0, 0), **kw):
    return Swinv2Config(image_size=image_size, patch_size=4, window_size=window, pretrained_window_sizes=list(pretrained),
                        encoder_stride=32, **{**SMALL, **kw})


def randomize(model, seed=0):
    """Random values everywhere (HF inits LayerNorms to 1/0 and logit scales to log 10: perturb them too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if "logit_scale" in name else 0.05
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def ours(image_size, window, pretrained=(), embed=32, depths=(2, 2, 2, 2), heads=(2, 4, 8, 16)):
    return swinv2.SwinV2Encoder(embed, tuple(depths), tuple(heads), image_size, 4, window, tuple(pretrained))


def images_and_mask(image_size, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, image_size, image_size, 3)).astype(np.float32)
    grid = image_size // 4
    mask = (rng.random((2, grid * grid)) < 0.6)
    return x, mask


@pytest.mark.slow
@pytest.mark.parametrize("image_size,window,pretrained", [
    (192, 12, (0, 0, 0, 0)),          # pretraining geometry: stages 3-4 use their whole grid, unshifted
    (224, 14, (12, 12, 12, 6)),       # the window change of fine-tuning: CPB normalized by the pretrained windows
])
def test_encoder_matches_hf_swinv2model(image_size, window, pretrained):
    hf = randomize(Swinv2Model(hf_config(image_size, window, pretrained), add_pooling_layer=False,
                               use_mask_token=True))
    x, mask = images_and_mask(image_size)
    with torch.no_grad():
        expect = hf(torch.from_numpy(x.transpose(0, 3, 1, 2)), bool_masked_pos=torch.from_numpy(mask))
    params = swinv2_weights.import_state_dict(hf.state_dict(), (2, 2, 2, 2), (2, 4, 8, 16))
    enc = ours(image_size, window, pretrained if any(pretrained) else ())
    got = enc.apply({"params": params["encoder"]}, jnp.asarray(x), token_mask=jnp.asarray(mask, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), expect.last_hidden_state.numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_simmim_matches_hf_swinv2_for_masked_image_modeling():
    """Reconstruction (1x1 conv + PixelShuffle(32) vs our per-token head) and the masked L1 loss, 192 px / window 12."""
    from mim_jax.objectives.simmim import simmim_loss
    hf = randomize(Swinv2ForMaskedImageModeling(hf_config(192, 12)), seed=1)
    x, mask = images_and_mask(192, seed=1)
    with torch.no_grad():
        expect = hf(torch.from_numpy(x.transpose(0, 3, 1, 2)), bool_masked_pos=torch.from_numpy(mask))
    params = swinv2_weights.import_state_dict(hf.state_dict(), (2, 2, 2, 2), (2, 4, 8, 16))
    model = SimMIM(encoder=ours(192, 12))
    out = model.apply({"params": params}, jnp.asarray(x), jnp.asarray(mask, jnp.float32))
    np.testing.assert_allclose(np.asarray(out["reconstruction"]), expect.reconstruction.numpy().transpose(0, 2, 3, 1),
                               atol=1e-5, rtol=1e-5)
    loss = simmim_loss(out, jnp.asarray(x), patch_size=4)
    np.testing.assert_allclose(float(loss), float(expect.loss), rtol=1e-5)
