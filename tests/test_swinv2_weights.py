"""SwinV2 weights: import an HF Swinv2 checkpoint (save_pretrained) and a Microsoft SwinV2 / SimMIM state dict
(torch.save, Microsoft's key names), compare our outputs to the torch model; export to the HF layout and load it
back into HF (strict) with the same outputs; bad files are refused in one line."""
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_simmim_objective import REPO
from test_swinv2 import hf_config, images_and_mask, ours, randomize
from transformers import Swinv2ForMaskedImageModeling, Swinv2Model

from mim_jax.convert import swinv2_weights
from mim_jax.errors import ConfigError
from mim_jax.models.simmim import SimMIM


def microsoft_state_dict(hf_sd: dict, simmim: bool) -> dict:
    """An HF Swinv2 state dict in Microsoft's names: fused qkv + q_bias / v_bias, cpb_mlp, norm1/2, mlp.fc1/2,
    buffers included; SimMIM: 'encoder.' prefix and decoder.0 (Microsoft SimMIM's SwinTransformerV2ForSimMIM)."""
    out = {}
    pre = "encoder." if simmim else ""
    for k, v in hf_sd.items():
        k = k.removeprefix("swinv2.")
        if k.startswith("decoder."):
            out[k] = v
            continue
        k = (k.replace("embeddings.patch_embeddings.projection", "patch_embed.proj")
              .replace("embeddings.norm", "patch_embed.norm").replace("embeddings.mask_token", "mask_token")
              .replace("layernorm.", "norm.").replace("encoder.layers", "layers")
              .replace("attention.self.continuous_position_bias_mlp", "attn.cpb_mlp")
              .replace("attention.self.logit_scale", "attn.logit_scale")
              .replace("attention.output.dense", "attn.proj").replace("layernorm_before", "norm1")
              .replace("layernorm_after", "norm2").replace("intermediate.dense", "mlp.fc1")
              .replace("output.dense", "mlp.fc2"))
        if "attention.self.query.weight" in k:
            base = k.replace("attention.self.query.weight", "attn.")
            kk = k.replace("query", "key")
            vv = k.replace("query", "value")
            out[pre + base + "qkv.weight"] = torch.cat([v, hf_sd_get(hf_sd, kk), hf_sd_get(hf_sd, vv)], 0)
            out[pre + base + "q_bias"] = hf_sd_get(hf_sd, k.replace("weight", "bias"))
            out[pre + base + "v_bias"] = hf_sd_get(hf_sd, vv.replace("weight", "bias"))
            out[pre + base + "relative_position_index"] = torch.zeros(1)  # buffers are recomputed, not read
            continue
        if "attention.self." in k:
            continue  # key / value / biases went into the fused qkv above
        out[pre + k] = v
    return out


def hf_sd_get(hf_sd, microsoft_key):
    """The HF tensor behind a half-renamed key (layers.i.blocks.j.attention.self.*)."""
    k = microsoft_key.replace("layers.", "encoder.layers.", 1)
    for prefix in ("", "swinv2."):
        if prefix + k in hf_sd:
            return hf_sd[prefix + k]
    raise KeyError(k)


def simmim_outputs(params, x, mask):
    model = SimMIM(encoder=ours(192, 12))
    return np.asarray(model.apply({"params": params}, jnp.asarray(x), jnp.asarray(mask, jnp.float32))["reconstruction"])


@pytest.fixture(scope="module")
def hf_simmim():
    model = randomize(Swinv2ForMaskedImageModeling(hf_config(192, 12)), seed=2)
    x, mask = images_and_mask(192, seed=2)
    with torch.no_grad():
        expect = model(torch.from_numpy(x.transpose(0, 3, 1, 2)), bool_masked_pos=torch.from_numpy(mask))
    return model, x, mask, expect.reconstruction.numpy().transpose(0, 2, 3, 1)


@pytest.mark.slow
def test_hf_save_pretrained_imports(hf_simmim, tmp_path):
    model, x, mask, expect = hf_simmim
    model.save_pretrained(tmp_path / "hf")
    variant, params = swinv2_weights.load_swinv2_file(str(tmp_path / "hf"))
    assert variant == "swinv2_cpu"
    np.testing.assert_allclose(simmim_outputs(params, x, mask), expect, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_microsoft_simmim_state_dict_imports(hf_simmim, tmp_path):
    model, x, mask, expect = hf_simmim
    sd = microsoft_state_dict(model.state_dict(), simmim=True)
    assert "encoder.layers.2.blocks.1.attn.qkv.weight" in sd and "encoder.patch_embed.proj.weight" in sd
    torch.save({"model": sd}, tmp_path / "simmim.pth")  # Microsoft's checkpoints wrap the state dict in 'model'
    variant, params = swinv2_weights.load_swinv2_file(str(tmp_path / "simmim.pth"))
    assert variant == "swinv2_cpu"
    np.testing.assert_allclose(simmim_outputs(params, x, mask), expect, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_microsoft_swinv2_encoder_state_dict_imports(tmp_path):
    hf = randomize(Swinv2Model(hf_config(192, 12), add_pooling_layer=False), seed=3)
    x, _ = images_and_mask(192, seed=3)
    with torch.no_grad():
        expect = hf(torch.from_numpy(x.transpose(0, 3, 1, 2))).last_hidden_state.numpy()
    sd = microsoft_state_dict(hf.state_dict(), simmim=False)
    sd["head.weight"], sd["head.bias"] = torch.zeros(10, 256), torch.zeros(10)  # a classifier's head is skipped
    torch.save(sd, tmp_path / "swinv2.pth")
    _, params = swinv2_weights.load_swinv2_file(str(tmp_path / "swinv2.pth"))
    got = ours(192, 12).apply({"params": params["encoder"]}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), expect, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_export_to_hf_loads_strictly_and_matches(hf_simmim, tmp_path):
    model, x, mask, expect = hf_simmim
    params = swinv2_weights.import_state_dict(model.state_dict(), (2, 2, 2, 2), (2, 4, 8, 16))
    out = swinv2_weights.save_hf(params, ours(192, 12), str(tmp_path / "export"))
    back = Swinv2ForMaskedImageModeling.from_pretrained(out).eval()
    sd = back.state_dict()
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(sd[k].numpy(), v.numpy(), err_msg=k)
    with torch.no_grad():
        again = back(torch.from_numpy(x.transpose(0, 3, 1, 2)), bool_masked_pos=torch.from_numpy(mask))
    np.testing.assert_allclose(again.reconstruction.numpy().transpose(0, 2, 3, 1), expect, atol=1e-6)


def test_pixel_shuffle_reordering_matches_torch():
    """Our head's (row, col, channel) output order is PixelShuffle's (channel, row, col) permuted."""
    s = 4
    perm = swinv2_weights._pixel_shuffle_order(s)
    chans = torch.arange(s * s * 3, dtype=torch.float32).reshape(1, -1, 1, 1)
    shuffled = torch.nn.functional.pixel_shuffle(chans, s)[0].permute(1, 2, 0).numpy()  # [s, s, 3]
    np.testing.assert_array_equal(shuffled.reshape(-1), perm)


def test_a_file_that_is_not_swinv2_is_refused(tmp_path):
    torch.save({"cls_token": torch.zeros(1, 1, 8), "pos_embed": torch.zeros(1, 5, 8)}, tmp_path / "vit.pth")
    with pytest.raises(ConfigError, match="no patch embedding found"):
        swinv2_weights.load_swinv2_file(str(tmp_path / "vit.pth"))


def test_an_unknown_size_names_the_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"width 40, depths \(2, 2\), heads \(2, 4\) is none of the sizes"):
        swinv2_weights.variant_of(40, (2, 2), (2, 4))


def test_convert_cli_writes_an_hf_checkpoint_from_a_microsoft_file(tmp_path):
    """python -m mim_jax.convert --format=hf_swinv2: a Microsoft SimMIM .pth -> an HF dir equal to the source model."""
    import subprocess
    import sys
    hf = randomize(Swinv2ForMaskedImageModeling(hf_config(192, 12)), seed=4)
    torch.save({"model": microsoft_state_dict(hf.state_dict(), simmim=True)}, tmp_path / "simmim.pth")
    out = subprocess.run([sys.executable, "-m", "mim_jax.convert", f"--from={tmp_path / 'simmim.pth'}",
                          "--format=hf_swinv2", f"--out={tmp_path / 'hf'}"], capture_output=True, text=True,
                         check=False, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "swinv2_cpu, encoder + SimMIM head, 192 px, window 12" in out.stdout
    back = Swinv2ForMaskedImageModeling.from_pretrained(tmp_path / "hf").state_dict()
    for k, v in hf.state_dict().items():
        np.testing.assert_array_equal(back[k].numpy(), v.numpy(), err_msg=k)
