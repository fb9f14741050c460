"""SimMIM: mask generator, window-normalized targets, masked L1, and parity with HF ViTForMaskedImageModeling.

References: float64 numpy descriptions, torch.nn.functional.avg_pool2d (SimMIM's own way of normalizing
targets) and transformers' ViTForMaskedImageModeling with random weights (fp32, eval mode).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mim_jax.errors import ConfigError
from mim_jax.models import simmim as model_lib
from mim_jax.models.vit import Encoder, count_params
from mim_jax.objectives import simmim as loss_lib

torch = pytest.importorskip("torch", reason="parity tests need the convert extra: pip install -e '.[convert]'")
transformers = pytest.importorskip("transformers", reason="parity tests need the convert extra")

from mim_jax.convert.checkpoint_files import read_checkpoint  # noqa: E402
from mim_jax.convert.layouts import import_vit  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def report(name: str, ours, ref) -> None:
    """Print the max abs / rel difference (visible with pytest -s) before asserting."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    diff = np.abs(ours - ref)
    print(f"{name}: max abs {diff.max():.3g}, max rel {(diff / np.maximum(np.abs(ref), 1e-12)).max():.3g}")


# ----- mask generator ------------------------------------------------------------------------------------------

def reference_masks(noise: np.ndarray, num_masked: int, factor: int) -> np.ndarray:
    """float64 numpy: per row, the num_masked cells of lowest noise are 1, each cell a factor x factor block."""
    b, cells = noise.shape
    g = math.isqrt(cells)
    out = np.zeros((b, (g * factor) ** 2))
    for i in range(b):
        cell_mask = np.zeros(cells)
        cell_mask[np.argsort(noise[i].astype(np.float64), kind="stable")[:num_masked]] = 1.0
        out[i] = np.kron(cell_mask.reshape(g, g), np.ones((factor, factor))).reshape(-1)
    return out


@pytest.mark.parametrize("image, mask_patch, patch, ratio", [(224, 32, 16, 0.6), (224, 28, 14, 0.6),
                                                             (192, 32, 16, 0.6), (32, 16, 8, 0.5)])
def test_masks_match_numpy_reference(image, mask_patch, patch, ratio):
    key = jax.random.key(7)
    cells, factor = (image // mask_patch) ** 2, mask_patch // patch
    masks = np.asarray(model_lib.sample_masks(key, 16, image, mask_patch, patch, ratio))
    noise = np.asarray(jax.random.uniform(key, (16, cells)))  # the draw sample_masks makes
    num_masked = math.ceil(ratio * cells)
    np.testing.assert_array_equal(masks, reference_masks(noise, num_masked, factor))
    assert masks.shape == (16, (image // patch) ** 2) and masks.dtype == np.float32
    assert np.all(masks.sum(axis=1) == num_masked * factor ** 2)  # exactly ceil(r * cells) cells per image
    g = image // patch
    blocks = masks.reshape(16, g // factor, factor, g // factor, factor)
    assert np.all(blocks == blocks[:, :, :1, :, :1])  # constant on every mask cell
    assert len({m.tobytes() for m in masks}) == min(16, math.comb(cells, num_masked))  # different per image
    np.testing.assert_array_equal(np.asarray(model_lib.sample_masks(key, 16, image, mask_patch, patch, ratio)),
                                  masks)  # deterministic for a key


def test_14px_patches_with_28px_mask_cells():
    masks = np.asarray(model_lib.sample_masks(jax.random.key(0), 4, 224, 28, 14, 0.6))
    assert masks.shape == (4, 256)
    assert np.all(masks.sum(axis=1) == 39 * 4)  # ceil(0.6 * 64) = 39 cells of 2 x 2 patches


def test_each_cell_is_masked_with_frequency_near_ratio():
    masks = np.asarray(model_lib.sample_masks(jax.random.key(3), 4096, 224, 32, 16, 0.6))
    per_cell = masks.reshape(4096, 14, 14)[:, ::2, ::2].mean(axis=0)  # one patch per 2 x 2 cell
    # Expected 30/49 = 0.612 per cell; the standard error over 4096 images is 0.0076.
    np.testing.assert_allclose(per_cell, 30 / 49, atol=0.05)
    np.testing.assert_allclose(per_cell, 0.6, atol=0.05)


@pytest.mark.fake_devices
def test_masks_do_not_depend_on_the_mesh():
    assert len(jax.devices()) == 8
    sample = lambda k: model_lib.sample_masks(k, 16, 224, 32, 16, 0.6)
    key = jax.random.fold_in(jax.random.key(0), 5)  # as in the train step: fold_in(key(seed), step)
    one = jax.jit(sample, out_shardings=jax.sharding.SingleDeviceSharding(jax.devices()[0]))(key)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.jit(sample, out_shardings=NamedSharding(mesh, P("data")))(key)
    assert len(sharded.sharding.device_set) == 8 and len(sharded.addressable_shards) == 8
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(one))


@pytest.mark.parametrize("args, field", [((224, 16, 24, 0.6), "simmim.mask_patch_size"),
                                         ((224, 16, 0, 0.6), "simmim.mask_patch_size"),
                                         ((224, 16, 48, 0.6), "simmim.mask_patch_size"),
                                         ((224, 16, 32, 1.0), "simmim.mask_ratio"),
                                         ((224, 16, 32, 0.0), "simmim.mask_ratio")])
def test_bad_mask_geometry_names_the_field(args, field):
    with pytest.raises(ConfigError, match=field):
        model_lib.validate_mask_geometry(*args)


@pytest.mark.parametrize("window", [-1, 1, 2, 48])
def test_bad_norm_window_names_the_field(window):
    with pytest.raises(ConfigError, match="simmim.norm_target_window"):
        loss_lib.validate_norm_window(window)


# ----- window-normalized targets -------------------------------------------------------------------------------

def numpy_window_normalize(x: np.ndarray, window: int) -> np.ndarray:
    """float64, pixel by pixel: the in-image pixels of the window, their mean and unbiased (ddof=1) variance."""
    x = x.astype(np.float64)
    _, h, w, _ = x.shape
    r = window // 2
    out = np.empty_like(x)
    for i in range(h):
        for j in range(w):
            win = x[:, max(0, i - r):i + r + 1, max(0, j - r):j + r + 1]
            mean, var = win.mean(axis=(1, 2)), win.var(axis=(1, 2), ddof=1)
            out[:, i, j] = (x[:, i, j] - mean) / np.sqrt(var + 1e-6)
    return out


def torch_window_normalize(x: np.ndarray, window: int) -> np.ndarray:
    """SimMIM's way in PyTorch: avg_pool2d means (count_include_pad=False), counts from a ones image, NCHW."""
    t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    pool = lambda y, include_pad: torch.nn.functional.avg_pool2d(y, window, stride=1, padding=window // 2,
                                                                 count_include_pad=include_pad)
    mean, mean_sq = pool(t, False), pool(t ** 2, False)
    count = pool(torch.ones_like(t), True) * window ** 2
    var = torch.clamp((mean_sq - mean ** 2) * (count / (count - 1)), min=0.0)
    return ((t - mean) / torch.sqrt(var + 1e-6)).numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("window", [3, 5, 47])  # 47 > 2 x 16: every window reaches past the image
def test_window_normalize_matches_numpy_and_torch(window):
    x = np.random.default_rng(window).normal(size=(2, 12, 16, 3)).astype(np.float32)
    ours = np.asarray(loss_lib.window_normalize(jnp.asarray(x), window))
    ref, ref_torch = numpy_window_normalize(x, window), torch_window_normalize(x, window)
    report(f"window_normalize k={window} vs numpy", ours, ref)
    report(f"window_normalize k={window} vs torch", ours, ref_torch)
    np.testing.assert_allclose(ours, ref, **TOL)
    np.testing.assert_allclose(ours, ref_torch, **TOL)
    if window == 47:  # each window holds the whole image: the per-image, per-channel standardization
        whole = (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(x.var(axis=(1, 2), ddof=1, keepdims=True) + 1e-6)
        np.testing.assert_allclose(ours, whole, **TOL)


# ----- masked L1 and the loss ----------------------------------------------------------------------------------

def numpy_masked_l1(pred: np.ndarray, target: np.ndarray, patch_mask: np.ndarray, patch: int) -> float:
    """float64: the patch mask repeated to pixels, |pred - target| summed over masked pixels and channels."""
    b, h, w, c = pred.shape
    pix = patch_mask.reshape(b, h // patch, w // patch).repeat(patch, axis=1).repeat(patch, axis=2)
    err = np.abs(pred.astype(np.float64) - target.astype(np.float64)) * pix[..., None]
    return err.sum() / (pix.sum() + 1e-5) / c


def test_masked_l1_and_loss_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    pred = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
    mask = np.asarray(model_lib.sample_masks(jax.random.key(1), 3, 32, 16, 8, 0.6))
    pix = np.asarray(loss_lib.pixel_mask(jnp.asarray(mask), 8))
    assert pix.shape == (3, 32, 32) and pix.sum() == 3 * 12 * 64
    expected = numpy_masked_l1(pred, x, mask, 8)
    got = float(loss_lib.masked_l1(jnp.asarray(pred), jnp.asarray(x), jnp.asarray(pix)))
    report("masked_l1 vs numpy", got, expected)
    assert got == pytest.approx(expected, rel=1e-6)
    outputs = {"reconstruction": jnp.asarray(pred), "mask": jnp.asarray(mask)}
    loss = loss_lib.simmim_loss(outputs, jnp.asarray(x), 8, norm_window=0)
    assert loss.dtype == jnp.float32 and float(loss) == pytest.approx(expected, rel=1e-6)
    normed = numpy_masked_l1(pred, numpy_window_normalize(x, 7), mask, 8)
    got = float(loss_lib.simmim_loss(outputs, jnp.asarray(x), 8, norm_window=7))
    report("simmim_loss k=7 vs numpy", got, normed)
    assert got == pytest.approx(normed, rel=1e-5)
    # No gradient flows into the target.
    grad = jax.grad(lambda im: loss_lib.simmim_loss(outputs, im, 8, 7))(jnp.asarray(x))
    assert np.all(np.asarray(grad) == 0)


# ----- parity with transformers' ViTForMaskedImageModeling ----------------------------------------------------

PATCH, IMAGE, WIDTH = 8, 32, 32


@pytest.fixture(scope="module")
def hf_simmim(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 image_size=IMAGE, patch_size=PATCH, encoder_stride=PATCH, layer_norm_eps=1e-12,
                                 hidden_act="gelu")
    model = transformers.ViTForMaskedImageModeling(cfg).eval()  # its ViTModel has use_mask_token=True
    with torch.no_grad():  # move every tensor off its init (mask token, biases and LN are 0 / 1 there)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = str(tmp_path_factory.mktemp("hf") / "vit_mim")
    model.save_pretrained(path)  # the checkpoint names (in memory, transformers 5 names modules differently)
    return model, path


def head_from_hf_decoder(weight: np.ndarray, bias: np.ndarray, p: int) -> dict:
    """HF decoder (Conv2d(D, p*p*3, 1) then PixelShuffle(p)) -> our `head` Dense(p*p*3) params.

    PixelShuffle writes conv channel c*p*p + i*p + j to pixel (i, j) of channel c in each patch: the conv's
    outputs are in (c, i, j) order. Our patch vectors (unpatchify) are in (i, j, c) order, index (i*p + j)*3 + c.
    So the conv weight [3*p*p, D, 1, 1] is read as [c, i, j, D], transposed to [i, j, c, D], flattened, and
    transposed to the [D, p*p*3] kernel; the bias is permuted the same way.
    """
    width = weight.shape[1]
    kernel = weight.reshape(3, p, p, width).transpose(1, 2, 0, 3).reshape(p * p * 3, width).T
    return {"kernel": kernel, "bias": bias.reshape(3, p, p).transpose(1, 2, 0).reshape(-1)}


def import_hf_simmim(model, path: str) -> dict:
    """Our SimMIM params from the saved HF model: the encoder through the HF ViT layout, the mask token, the head."""
    sd, hf_config = read_checkpoint(path)
    arch, encoder = import_vit(sd, hf_config)
    assert (arch.positions, arch.ln_eps, arch.patch_size, arch.width) == ("learned", 1e-12, PATCH, WIDTH)
    encoder["mask_token"] = sd["vit.embeddings.mask_token"]
    return {"encoder": encoder, "head": head_from_hf_decoder(sd["decoder.0.weight"], sd["decoder.0.bias"], PATCH)}


def our_simmim(dtype=jnp.float32, drop_path_rate: float = 0.0) -> model_lib.SimMIM:
    return model_lib.SimMIM(Encoder(width=WIDTH, depth=2, heads=2, mlp_dim=64, patch_size=PATCH, image_size=IMAGE,
                                    positions="learned", ln_eps=1e-12, dtype=dtype, drop_path_rate=drop_path_rate))


@pytest.mark.slow
def test_parity_with_hf_vit_for_masked_image_modeling(hf_simmim):
    model, path = hf_simmim
    params = import_hf_simmim(model, path)
    x = np.random.default_rng(0).normal(size=(3, 3, IMAGE, IMAGE)).astype(np.float32)  # normalized pixels, NCHW
    images = jnp.asarray(x.transpose(0, 2, 3, 1))
    mask = model_lib.sample_masks(jax.random.key(2), 3, IMAGE, 16, PATCH, 0.6)
    ours = our_simmim()
    init = nn.unbox(jax.eval_shape(ours.init, jax.random.key(0), images, mask)["params"])
    assert jax.tree.map(np.shape, init) == jax.tree.map(np.shape, params)  # the same param tree, exactly
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x), bool_masked_pos=torch.from_numpy(np.asarray(mask) > 0))
    out = jax.jit(ours.apply)({"params": params}, images, mask)
    ref_recon = ref.reconstruction.numpy().transpose(0, 2, 3, 1)
    report("reconstruction vs HF", out["reconstruction"], ref_recon)
    np.testing.assert_allclose(np.asarray(out["reconstruction"]), ref_recon, **TOL)
    loss = loss_lib.simmim_loss(out, images, PATCH, norm_window=0)
    report("loss vs HF", loss, float(ref.loss))
    np.testing.assert_allclose(float(loss), float(ref.loss), **TOL)
    # bf16 compute keeps fp32 outputs, near the fp32 numbers.
    out16 = jax.jit(our_simmim(jnp.bfloat16).apply)({"params": params}, images, mask)
    assert out16["reconstruction"].dtype == jnp.float32
    report("bf16 reconstruction vs HF fp32", out16["reconstruction"], ref_recon)
    np.testing.assert_allclose(np.asarray(out16["reconstruction"]), ref_recon, atol=0.1)
    np.testing.assert_allclose(float(loss_lib.simmim_loss(out16, images, PATCH)), float(ref.loss), rtol=1e-2)


@pytest.mark.slow
def test_train_flag_reaches_the_encoder_drop_path(hf_simmim):
    params = import_hf_simmim(*hf_simmim)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(4, IMAGE, IMAGE, 3)).astype(np.float32))
    mask = model_lib.sample_masks(jax.random.key(3), 4, IMAGE, 16, PATCH, 0.6)
    reference = jax.jit(our_simmim().apply)({"params": params}, images, mask)["reconstruction"]
    dropping = jax.jit(our_simmim(drop_path_rate=0.5).apply, static_argnames="train")
    np.testing.assert_array_equal(dropping({"params": params}, images, mask)["reconstruction"], reference)
    trained = dropping({"params": params}, images, mask, train=True, rngs={"dropout": jax.random.key(4)})
    assert np.abs(np.asarray(trained["reconstruction"]) - np.asarray(reference)).max() > 1e-3


@pytest.mark.fake_devices
def test_loss_is_the_same_with_the_batch_sharded_over_8_devices():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(8, 32, 32, 3)).astype(np.float32))
    outputs = {"reconstruction": jnp.asarray(rng.normal(size=(8, 32, 32, 3)).astype(np.float32)),
               "mask": model_lib.sample_masks(jax.random.key(6), 8, 32, 16, 8, 0.6)}
    loss = jax.jit(lambda o, im: loss_lib.simmim_loss(o, im, 8, 7))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    shard = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
    np.testing.assert_allclose(float(loss(jax.tree.map(shard, outputs), shard(x))), float(loss(outputs, x)),
                               rtol=1e-6)


def test_params_are_the_encoder_mask_token_and_head_with_logical_axes():
    model = model_lib.SimMIM(Encoder(width=768, depth=12, heads=12, mlp_dim=3072, patch_size=16, image_size=192))
    images, mask = jnp.zeros((1, 192, 192, 3)), jnp.zeros((1, 144))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, mask))["params"]
    plain = jax.eval_shape(lambda: model.encoder.init(jax.random.key(0), images))["params"]
    head = 768 * 16 * 16 * 3 + 16 * 16 * 3
    assert count_params(shapes) == count_params(plain) + 768 + head  # ViT-B/16 + mask token + head
    boxes = jax.tree.leaves(shapes, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))
    assert all(isinstance(b, nn.LogicallyPartitioned) and len(b.names) == len(b.value.shape) for b in boxes)
    assert shapes["head"]["kernel"].names == ("embed", "patch") and shapes["head"]["bias"].names == ("patch",)
