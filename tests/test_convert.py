"""PyTorch weight import/export against the transformers models (random init, tiny configs, fp32, 1e-5).

Every checkpoint is written by the test in its real format: HF `save_pretrained` (safetensors + config.json),
and torch.save state dicts in the official MAE / OpenAI CLIP / timm key layouts.
"""
import argparse
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

torch = pytest.importorskip("torch", reason="parity tests need the convert extra: pip install -e '.[convert]'")
transformers = pytest.importorskip("transformers", reason="parity tests need the convert extra")

from mim_jax.config.defaults import base_config  # noqa: E402
from mim_jax.config.validation import ConfigError  # noqa: E402
from mim_jax.convert.__main__ import convert  # noqa: E402
from mim_jax.convert.checkpoint_files import read_checkpoint, read_safetensors  # noqa: E402
from mim_jax.convert.export import export_timm, timm_state_dict  # noqa: E402
from mim_jax.convert.layouts import import_vit  # noqa: E402
from mim_jax.convert.mae_checkpoints import import_mae  # noqa: E402
from mim_jax.convert.native import load_native  # noqa: E402
from mim_jax.models.teachers import TeacherViT, params_at_grid  # noqa: E402
from mim_jax.objectives import targets as objectives  # noqa: E402
from mim_jax.objectives.mae import build_mae  # noqa: E402

pytestmark = pytest.mark.slow  # PyTorch / transformers parity: builds HF models (tens of seconds)

TOL = dict(rtol=1e-5, atol=1e-5)
SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
             patch_size=8)


def pixels(size: int = 32, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32)


def nhwc(x: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def teacher_forward(arch, params, x, feature="final", grid=None):
    grid = grid or arch.grid_size
    module = TeacherViT(arch.at_grid(grid), feature, jnp.float32)
    params = {k: v for k, v in params_at_grid(params, arch, grid).items()
              if feature == "final" or k not in ("norm", "proj")}
    return np.asarray(module.apply({"params": params}, nhwc(x)))


def same_tree(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(**SIZES, projection_dim=24, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    model = transformers.CLIPVisionModelWithProjection(cfg).eval()
    path = str(tmp_path_factory.mktemp("hf") / "clip")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def hf_dino(tmp_path_factory):
    torch.manual_seed(1)
    cfg = transformers.ViTConfig(**SIZES, layer_norm_eps=1e-6, hidden_act="gelu")
    model = transformers.ViTModel(cfg).eval()
    path = str(tmp_path_factory.mktemp("hf") / "dino")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def hf_mae(tmp_path_factory):
    torch.manual_seed(2)
    cfg = transformers.ViTMAEConfig(**SIZES, layer_norm_eps=1e-6, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                                    decoder_num_attention_heads=2, decoder_intermediate_size=64, mask_ratio=0.75,
                                    norm_pix_loss=True)
    model = transformers.ViTMAEForPreTraining(cfg).eval()
    # transformers 5 leaves both position tables at zero at random init (its sin-cos init is skipped for
    # modules marked initialized); released MAE checkpoints hold the fixed sin-cos tables: set them with
    # transformers' own initializers.
    model.vit.embeddings.patch_embeddings.projection._is_hf_initialized = False
    model.vit.embeddings.initialize_weights()
    model.decoder.initialize_weights(model.vit.embeddings.patch_embeddings.num_patches)
    path = str(tmp_path_factory.mktemp("hf") / "vitmae")
    model.save_pretrained(path)
    return model, path


def test_clip_parity_with_transformers(hf_clip):
    model, path = hf_clip
    arch, params = import_vit(*read_checkpoint(path))
    assert (arch.activation, arch.ln_eps, arch.patch_bias, arch.ln_pre, arch.proj_dim) == ("quick_gelu", 1e-5,
                                                                                          False, True, 24)
    x = pixels()
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x))
        every_token = model.visual_projection(model.vision_model.post_layernorm(out.last_hidden_state)).numpy()
    np.testing.assert_allclose(teacher_forward(arch, params, x, "last_block"), out.last_hidden_state.numpy(), **TOL)
    final = teacher_forward(arch, params, x, "final")  # ln_post + projection on every token (the teacher's use)
    np.testing.assert_allclose(final[:, 0], out.image_embeds.numpy(), **TOL)
    np.testing.assert_allclose(final, every_token, **TOL)
    # At 48 px (6x6 grid) with the position table interpolated like HF's interpolate_pos_encoding.
    x48 = pixels(48)
    with torch.no_grad():
        out48 = model(pixel_values=torch.from_numpy(x48), interpolate_pos_encoding=True)
    np.testing.assert_allclose(teacher_forward(arch, params, x48, "final", grid=6)[:, 0], out48.image_embeds.numpy(),
                               **TOL)


def openai_layout(sd: dict) -> dict:
    """HF CLIP vision weights renamed to the OpenAI CLIP state dict (visual.*), with text-tower keys beside."""
    out = {"token_embedding.weight": torch.zeros(8, 4), "logit_scale": torch.ones(())}
    for key, v in sd.items():
        k = key.replace("vision_model.", "visual.")
        k = k.replace("embeddings.class_embedding", "class_embedding").replace("embeddings.patch_embedding", "conv1")
        k = k.replace("embeddings.position_embedding.weight", "positional_embedding")
        k = k.replace("pre_layrnorm", "ln_pre").replace("post_layernorm", "ln_post")
        k = k.replace("encoder.layers.", "transformer.resblocks.").replace("layer_norm1", "ln_1")
        k = k.replace("layer_norm2", "ln_2").replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj")
        k = k.replace("self_attn.out_proj", "attn.out_proj")
        if k == "visual_projection.weight":
            out["visual.proj"] = v.T.contiguous()
        elif "self_attn.q_proj" in k:
            kind = k.rsplit(".", 1)[1]
            parts = [sd[key.replace("q_proj", n)] for n in ("q_proj", "k_proj", "v_proj")]
            out[k.replace("self_attn.q_proj." + kind, "attn.in_proj_" + kind)] = torch.cat(parts)
        elif "self_attn.k_proj" not in k and "self_attn.v_proj" not in k:
            out[k] = v
    return out


def test_openai_clip_state_dict_imports_like_hf(hf_clip, tmp_path):
    model, path = hf_clip
    hf_arch, hf_params = import_vit(*read_checkpoint(path))
    pt = str(tmp_path / "ViT-tiny.pt")
    torch.save(openai_layout(model.state_dict()), pt)
    arch, params = import_vit(*read_checkpoint(pt), heads=2)  # an OpenAI file does not say; B/16 is in the table
    assert arch == hf_arch
    same_tree(params, hf_params)


def test_dino_parity_with_transformers(hf_dino):
    model, path = hf_dino
    arch, params = import_vit(*read_checkpoint(path))
    assert arch.positions == "learned" and arch.proj_dim == 0 and not arch.ln_pre
    x = pixels()
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
        ref48 = model(pixel_values=torch.from_numpy(pixels(48)), interpolate_pos_encoding=True).last_hidden_state
    np.testing.assert_allclose(teacher_forward(arch, params, x), ref, **TOL)
    np.testing.assert_allclose(teacher_forward(arch, params, pixels(48), grid=6), ref48.numpy(), **TOL)


def official_mae_layout(sd: dict) -> dict:
    """HF ViTMAEForPreTraining weights renamed to the official MAE checkpoint's timm names (fused qkv)."""
    out = {}
    for key, v in sd.items():
        k = key.replace("vit.embeddings.cls_token", "cls_token").replace("vit.embeddings.position_embeddings",
                                                                         "pos_embed")
        k = k.replace("vit.embeddings.patch_embeddings.projection", "patch_embed.proj").replace("vit.layernorm",
                                                                                                "norm")
        k = k.replace("vit.encoder.layer.", "blocks.").replace("decoder.decoder_encoder.layer.", "decoder_blocks.")
        k = re.sub(r"^decoder\.", "", k)
        k = k.replace("layernorm_before", "norm1").replace("layernorm_after", "norm2")
        k = k.replace("attention.output.dense", "attn.proj").replace("intermediate.dense", "mlp.fc1")
        k = k.replace("output.dense", "mlp.fc2")
        if "attention.attention.query" in k:
            parts = [sd[key.replace("query", n)] for n in ("query", "key", "value")]
            out[k.replace("attention.attention.query", "attn.qkv")] = torch.cat(parts)
        elif "attention.attention" not in k:
            out[k] = v
    return out


def mae_model_config():
    c = base_config()
    c.model.update(dict(variant="Ti/16", width=32, depth=2, heads=2, mlp_dim=64, patch_size=8, image_size=32,
                        dtype="float32"))
    c.mae.norm_pix_loss = True
    c.mae.decoder.update(dict(width=16, depth=1, heads=2, mlp_ratio=4))
    return c


def test_vitmae_same_loss_and_reconstruction(hf_mae, tmp_path):
    model, path = hf_mae
    arch, decoder, params = import_mae(*read_checkpoint(path))
    assert arch.positions == "sincos" and decoder.width == 16 and decoder.out_dim == 8 * 8 * 3
    ours = build_mae(mae_model_config())
    x = pixels(batch=3)
    noise = np.random.default_rng(3).uniform(size=(3, 16)).astype(np.float32)
    init = nn.unbox(ours.init(jax.random.key(0), nhwc(x), jnp.asarray(noise))["params"])
    assert jax.tree.map(np.shape, init) == jax.tree.map(np.shape, params)  # the MAE param tree, exactly
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x), noise=torch.from_numpy(noise))
    out = ours.apply({"params": params}, nhwc(x), jnp.asarray(noise))
    np.testing.assert_array_equal(np.asarray(out["mask"]), ref.mask.numpy())
    np.testing.assert_allclose(np.asarray(out["pred"]), ref.logits.numpy(), **TOL)
    loss = objectives.mae_pixel_loss(out, nhwc(x), 8, norm_pix_loss=True)
    np.testing.assert_allclose(float(loss), float(ref.loss), **TOL)
    # The same weights as an official MAE checkpoint ({'model': state_dict}, timm names) import identically.
    pth = str(tmp_path / "mae_pretrain_tiny.pth")
    saved = {k: torch.from_numpy(v) for k, v in read_safetensors(os.path.join(path, "model.safetensors")).items()}
    torch.save({"model": official_mae_layout(saved)}, pth)
    arch2, decoder2, params2 = import_mae(*read_checkpoint(pth), heads=2, decoder_heads=2)  # not in the file
    assert (arch2, decoder2) == (arch, decoder)
    same_tree(params2, params)


def test_export_then_import_is_identity(hf_mae, hf_dino, tmp_path):
    for name, (model, path) in {"mae": hf_mae, "dino": hf_dino}.items():
        arch, params = import_vit(*read_checkpoint(path))
        out = str(tmp_path / f"{name}_timm.safetensors")
        export_timm(params, arch, out)
        arch2, params2 = import_vit(read_safetensors(out), heads=arch.heads)
        assert arch2 == arch
        same_tree(params2, params)
        # A MAWS-style .pth (timm state dict) of the same weights imports the same way.
        pth = str(tmp_path / f"{name}_maws.pth")
        torch.save({k: torch.from_numpy(v) for k, v in timm_state_dict(params, arch).items()}, pth)
        same_tree(import_vit(*read_checkpoint(pth), heads=arch.heads)[1], params)


@pytest.mark.multiprocess
def test_cli_writes_mim_jax_and_timm_files(hf_mae, tmp_path):
    _, path = hf_mae
    native = str(tmp_path / "mae.safetensors")
    print(convert(path, native, "mim_jax"))
    arch, params = load_native(native)
    _, _, reference = import_mae(*read_checkpoint(path))
    same_tree(params, reference)
    env = dict(os.environ, PYTHONPATH=os.getcwd(), JAX_PLATFORMS="cpu")
    timm_out = str(tmp_path / "enc_timm.safetensors")
    done = subprocess.run([sys.executable, "-m", "mim_jax.convert", f"--from={native}", "--format=timm",
                           f"--out={timm_out}"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    same_tree(import_vit(read_safetensors(timm_out), heads=2)[1], reference["encoder"])
    bad = subprocess.run([sys.executable, "-m", "mim_jax.convert", f"--from={tmp_path}/nope.pth", "--format=timm",
                          f"--out={timm_out}"], capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "nope.pth" in bad.stderr


def test_mismatched_keys_list_missing_unexpected_and_closest(hf_dino, tmp_path):
    arch, params = import_vit(*read_checkpoint(hf_dino[1]))
    sd = timm_state_dict(params, arch)
    del sd["blocks.1.mlp.fc2.bias"]
    sd["blocks.1.ls1.gamma"] = np.ones(32, np.float32)  # e.g. a DINOv2 layer-scale checkpoint
    with pytest.raises(ConfigError, match=r"1 missing \['blocks.1.mlp.fc2.bias'\], 1 unexpected "
                                          r"\['blocks.1.ls1.gamma'\].*closest architecture in VIT_SIZES is Ti/16"):
        import_vit(sd, heads=2)
    with pytest.raises(ConfigError, match=r"chosen architecture B/16: 120 missing.*width 32, depth 2, patch 8"):
        import_vit(timm_state_dict(params, arch), variant="B/16")


def test_pickle_needing_code_execution_is_refused(hf_dino, tmp_path):
    arch, params = import_vit(*read_checkpoint(hf_dino[1]))
    sd = {k: torch.from_numpy(v) for k, v in timm_state_dict(params, arch).items()}
    path = str(tmp_path / "checkpoint-799.pth")  # a training checkpoint: argparse.Namespace needs code to rebuild
    torch.save({"model": sd, "args": argparse.Namespace(lr=1.5e-4)}, path)
    with pytest.raises(ConfigError, match=r"checkpoint-799.pth: refused to load.*weights_only=True"):
        read_checkpoint(path)


def test_bfloat16_safetensors_read_as_float32(hf_dino, tmp_path):
    from safetensors.flax import save_file
    arch, params = import_vit(*read_checkpoint(hf_dino[1]))
    sd = timm_state_dict(params, arch)
    path = str(tmp_path / "bf16.safetensors")
    save_file({k: jnp.asarray(v, jnp.bfloat16) for k, v in sd.items()}, path)
    _, params_bf16 = import_vit(read_safetensors(path), heads=2)
    rounded = jax.tree.map(lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32), params)
    same_tree(params_bf16, rounded)
