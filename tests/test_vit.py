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
    """In float64, where no kernel choice of the compiler shows through rounding: recomputing activations in the
    backward pass gives the outputs and gradients of storing them, to 1e-12."""
    outs = []
    with jax.enable_x64(True):
        for remat in ("none", "full", "save_dots"):
            enc = vit.encoder_from_config(model_cfg("Ti/16", width=64, depth=2, heads=4, mlp_dim=256, image_size=32,
                                                    remat=remat, dtype="float64"))
            x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3), dtype=jnp.float64)
            params = jax.tree.map(lambda p: p.astype(jnp.float64), nn.unbox(enc.init(jax.random.key(0), x)["params"]))
            loss = lambda p: jnp.sum(enc.apply({"params": p}, x) ** 2)
            outs.append((enc.apply({"params": params}, x), jax.grad(loss)(params)))
    assert outs[0][0].dtype == np.float64 and {g.dtype for g in jax.tree.leaves(outs[0][1])} == {np.dtype("float64")}
    for out, grads in outs[1:]:
        np.testing.assert_allclose(out, outs[0][0], rtol=1e-12, atol=1e-12)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14), grads, outs[0][1])


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


def manual_forward(enc, params, x, token_mask):
    """The encoder composed by hand: patch embed, mask token on masked rows, sin-cos positions, CLS, blocks, norm."""
    tokens = np.asarray(vit.PatchEmbed(enc.width, enc.patch_size).apply({"params": params["patch_embed"]}, x))
    tokens = np.where(np.asarray(token_mask)[..., None] == 1, np.asarray(params["mask_token"]), tokens)
    pos = vit.sincos_2d(enc.width, enc.grid_size)
    cls = np.broadcast_to(np.asarray(params["cls_token"]) + pos[None, :1], (x.shape[0], 1, enc.width))
    tokens = np.concatenate([cls, tokens + pos[None, 1:]], axis=1)
    stack = vit.BlockStack(enc.width, enc.depth, enc.heads, enc.mlp_dim)
    tokens = stack.apply({"params": params["blocks"]}, jnp.asarray(tokens))
    return np.asarray(vit.layer_norm(jnp.float32, "norm").apply({"params": params["norm"]}, tokens))


def test_token_mask_replaces_masked_embeddings_before_positions():
    enc, x, variables = init_small(depth=2, width=64)
    token_mask = jnp.array([[1, 0, 0, 1], [0, 1, 1, 1]], jnp.float32)
    masked_vars = enc.init(jax.random.key(0), x, token_mask=token_mask)
    assert "mask_token" not in variables["params"]  # the unmasked (MAE) tree is unchanged
    params = nn.unbox(masked_vars["params"])
    assert params["mask_token"].shape == (1, 1, 64)
    assert masked_vars["params"]["mask_token"].names == (None, None, "embed")
    assert np.std(np.asarray(params["mask_token"])) == pytest.approx(0.02, rel=0.5)
    out = np.asarray(enc.apply({"params": params}, x, token_mask=token_mask))
    np.testing.assert_allclose(out, manual_forward(enc, params, x, token_mask), rtol=1e-5, atol=1e-5)
    # Pixels under masked patches (16-px patches of a 32-px image: patch 0 = top-left) no longer matter.
    changed = x.at[0, :16, :16].add(5.0).at[1, 16:, 16:].add(5.0)
    np.testing.assert_array_equal(np.asarray(enc.apply({"params": params}, changed, token_mask=token_mask)), out)
    # An all-zero mask is the plain encoder, bit for bit.
    plain = {k: v for k, v in params.items() if k != "mask_token"}
    np.testing.assert_array_equal(np.asarray(enc.apply({"params": params}, x, token_mask=jnp.zeros((2, 4)))),
                                  np.asarray(enc.apply({"params": plain}, x)))
    with pytest.raises(ValueError, match=r"token_mask has shape \(2, 5\)"):
        enc.apply({"params": params}, x, token_mask=jnp.zeros((2, 5)))
def attention_reference(x: np.ndarray, p: dict) -> np.ndarray:
    """Float64 numpy multi-head softmax attention with the Attention module's q/k/v/out params."""
    x, p = np.asarray(x, np.float64), jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    q, k, v = (np.einsum("btd,dhk->bthk", x, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value"))
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqs,bshk->bqhk", weights, v)
    return np.einsum("bthk,hkd->btd", out, p["out"]["kernel"]) + p["out"]["bias"]


def test_xla_attention_matches_float64_reference_and_auto_equals_it():
    x = jax.random.normal(jax.random.key(3), (2, 17, 64), jnp.float32)
    module = vit.Attention(64, 4, jnp.float32, "xla")
    params = nn.unbox(module.init(jax.random.key(0), x)["params"])
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(5), a.shape), params)  # non-zero biases
    out = np.asarray(module.apply({"params": params}, x))
    np.testing.assert_allclose(out, attention_reference(x, params), rtol=1e-6, atol=1e-6)
    auto = vit.Attention(64, 4, jnp.float32, "auto").apply({"params": params}, x)
    if jax.devices()[0].platform == "cpu":
        np.testing.assert_array_equal(np.asarray(auto), out)


def test_encoder_passes_model_attention_and_default_keeps_numbers():
    cfg = model_cfg("Ti/16", width=32, depth=1, heads=2, mlp_dim=64, image_size=32, patch_size=16)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    old = vit.encoder_from_config(cfg)  # a run config without the field: xla
    assert old.attention == "xla"
    params = old.init(jax.random.key(0), x)
    for name in ("xla", "auto"):
        cfg.attention = name
        enc = vit.encoder_from_config(cfg)
        assert enc.attention == name
        np.testing.assert_array_equal(np.asarray(enc.apply(params, x)), np.asarray(old.apply(params, x)))


def test_attention_field_errors_name_the_field():
    from mim_jax.config.defaults import base_config
    from mim_jax.config.validation import validate_model
    c = base_config()
    assert c.model.attention == "xla"
    c.model.attention = "flash"
    with pytest.raises(ValueError, match=r"model.attention='flash'.*\('xla', 'cudnn', 'auto'\)"):
        validate_model(c.model)
    with pytest.raises(ValueError, match="model.attention='cudnn' needs NVIDIA GPUs.*cpu"):
        vit.check_attention_platform("cudnn", "cpu")
    vit.check_attention_platform("cudnn", "gpu")


def test_cudnn_attention_on_cpu_fails_in_build_program():
    from conftest import tiny_pretrain_config
    from mim_jax.parallel.sharding import make_mesh
    from mim_jax.train.program import build_program
    c = tiny_pretrain_config("unused")
    c.model.attention = "cudnn"
    if jax.devices()[0].platform == "cpu":
        with pytest.raises(ValueError, match="model.attention='cudnn' needs NVIDIA GPUs"):
            build_program(c, make_mesh(c.mesh))


def test_scan_unroll_field_keeps_the_function():
    cfg = model_cfg("Ti/16", width=32, depth=3, heads=2, mlp_dim=64, image_size=32, patch_size=16)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    rolled = vit.encoder_from_config(cfg)
    params = rolled.init(jax.random.key(0), x)
    cfg.scan_unroll = 99  # clamped to the depth: fully unrolled
    unrolled = vit.encoder_from_config(cfg)
    assert unrolled.scan_unroll == 3
    np.testing.assert_allclose(unrolled.apply(params, x), rolled.apply(params, x), atol=1e-5)
