"""ViT encoder: size table vs MAWS Table 1, sin-cos positions, MAE-faithful init, logical axis names."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mim_jax.models import vit

# MAWS (Singh et al. 2023) Table 1 parameter counts of the encoders.
MAWS_PARAMS = {"B/16": 86e6, "L/16": 307e6, "H/14": 632e6, "2B/14": 1.89e9, "6.5B/14": 6.44e9}


def model_cfg(variant="Ti/16", **overrides):
    c = ml_collections.ConfigDict(dict(variant=variant, width=0, depth=0, heads=0, mlp_dim=0, patch_size=0,
                                       image_size=224, remat="none", dtype="float32"))
    c.update(overrides)
    return c


def abstract_param_count(variant: str) -> int:
    enc = vit.encoder_from_config(model_cfg(variant))
    shapes = jax.eval_shape(lambda: enc.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    return vit.count_params(shapes["params"])


def closed_form_count(size: vit.ViTSize) -> int:
    d, m, p = size.width, size.mlp_dim, size.patch_size
    block = 4 * (d * d + d) + (d * m + m) + (m * d + d) + 4 * d
    return size.depth * block + (p * p * 3 * d + d) + d + 2 * d


@pytest.mark.parametrize("variant", sorted(vit.VIT_SIZES))
def test_param_count_matches_closed_form(variant):
    assert abstract_param_count(variant) == closed_form_count(vit.VIT_SIZES[variant])


@pytest.mark.parametrize("variant", ["B/16", "H/14", "2B/14", "6.5B/14"])
def test_param_count_matches_maws_table1_within_1pct(variant):
    assert abs(abstract_param_count(variant) / MAWS_PARAMS[variant] - 1) < 0.01


def test_vit_l16_count_is_the_architecture_count():
    # MAWS and ViT list 307M for L/16; the architecture itself (timm's vit_large_patch16_224 minus its
    # 1000-class head) has 303.3M, 1.3% lower. We count what the architecture has.
    assert abstract_param_count("L/16") == 303_099_904
    assert abs(abstract_param_count("L/16") / MAWS_PARAMS["L/16"] - 1) < 0.015


def test_table_dims_match_maws():
    expected = {"B/16": (768, 12, 12, 3072), "L/16": (1024, 24, 16, 4096), "H/14": (1280, 32, 16, 5120),
                "2B/14": (2560, 24, 32, 10240), "6.5B/14": (4096, 32, 32, 16384)}
    for name, dims in expected.items():
        s = vit.VIT_SIZES[name]
        assert (s.width, s.depth, s.heads, s.mlp_dim) == dims


def reference_sincos_2d(dim, grid):
    """Direct loop form of MAE's get_2d_sincos_pos_embed (width half from columns, then rows)."""
    out = np.zeros((grid * grid + 1, dim))
    quarter = dim // 4
    for r in range(grid):
        for c in range(grid):
            row = 1 + r * grid + c
            for i in range(quarter):
                w = 1.0 / 10000 ** (i / quarter)
                out[row, i], out[row, quarter + i] = np.sin(c * w), np.cos(c * w)
                out[row, 2 * quarter + i], out[row, 3 * quarter + i] = np.sin(r * w), np.cos(r * w)
    return out


def test_sincos_2d_matches_reference():
    np.testing.assert_allclose(vit.sincos_2d(32, 4), reference_sincos_2d(32, 4), atol=1e-6)
    assert np.all(vit.sincos_2d(32, 4)[0] == 0)


def init_small(depth=2, width=64, heads=4, remat="none"):
    enc = vit.encoder_from_config(model_cfg("Ti/16", width=width, depth=depth, heads=heads, mlp_dim=4 * width,
                                            image_size=32, remat=remat))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = enc.init(jax.random.key(0), x)
    return enc, x, variables


@pytest.mark.slow
def test_every_param_has_logical_axes_for_each_dim():
    _, _, variables = init_small()
    boxes = jax.tree.leaves(variables["params"], is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert boxes and all(isinstance(b, nn.LogicallyPartitioned) for b in boxes)
    for b in boxes:
        assert len(b.names) == b.value.ndim


@pytest.mark.slow
def test_scan_stacks_layers_and_init_statistics():
    enc, x, variables = init_small(depth=3, width=64)
    params = nn.unbox(variables["params"])
    layers = params["blocks"]["layers"]
    assert layers["attn"]["query"]["kernel"].shape == (3, 64, 4, 16)
    # Split q/k/v match a fused [D, 3D] xavier-uniform: bound sqrt(6 / (D + 3D)).
    bound = np.sqrt(6 / (64 + 3 * 64))
    q = np.asarray(layers["attn"]["query"]["kernel"])
    assert np.abs(q).max() <= bound
    assert np.var(q) == pytest.approx(bound ** 2 / 3, rel=0.1)
    fc1 = np.asarray(layers["mlp"]["fc1"]["kernel"])
    assert np.var(fc1) == pytest.approx(6 / (64 + 256) / 3, rel=0.1)
    # Patch embedding: xavier on the flattened [p*p*3, D] kernel.
    pk = np.asarray(params["patch_embed"]["kernel"])
    assert np.var(pk) == pytest.approx(6 / (16 * 16 * 3 + 64) / 3, rel=0.1)
    assert np.all(np.asarray(layers["attn"]["query"]["bias"]) == 0)
    assert np.std(np.asarray(params["cls_token"])) == pytest.approx(0.02, rel=0.3)
    # Layers get different draws.
    assert not np.allclose(q[0], q[1])


@pytest.mark.slow
def test_remat_policies_give_same_output_and_grads():
    outs = []
    for remat in ("none", "full", "save_dots"):
        enc, x, variables = init_small(remat=remat)
        params = nn.unbox(variables["params"])
        loss = lambda p: jnp.sum(enc.apply({"params": p}, x) ** 2)
        outs.append((enc.apply({"params": params}, x), jax.grad(loss)(params)))
    for out, grads in outs[1:]:
        np.testing.assert_allclose(out, outs[0][0], atol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, outs[0][1])


@pytest.mark.slow
def test_keep_ids_select_tokens():
    enc, x, variables = init_small(depth=0 + 1)
    full = enc.apply(variables, x)
    assert full.shape == (2, 1 + 4, 64)
    kept = enc.apply(variables, x, keep_ids=jnp.array([[0, 3], [2, 1]]))
    assert kept.shape == (2, 3, 64)


def test_bad_variant_and_width():
    with pytest.raises(ValueError, match="model.variant='XL/16'"):
        vit.lookup_size("XL/16")
    with pytest.raises(ValueError, match="not divisible by model.heads"):
        vit.resolve_dims(model_cfg("Ti/16", width=100, heads=3))
