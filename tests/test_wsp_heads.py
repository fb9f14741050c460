"""WSP heads in timm / MAWS layout: import from a MAWS-keyed .pth (forward vs float64 numpy), export of a WSP run."""
import jax
import numpy as np
import pytest
import torch

from conftest import make_run_dir, tiny_pretrain_config
from mim_jax.convert.conversion import convert
from mim_jax.convert.export import timm_state_dict
from mim_jax.convert.layouts import TIMM, expected_keys
from mim_jax.convert.loading import load_any
from mim_jax.convert.wsp_heads import HEAD_KEYS, import_head, pad_head, unpad_head
from mim_jax.errors import ConfigError
from mim_jax.models.heads import WSPHead, padded_classes
from mim_jax.models.teachers import encoder_arch

WIDTH, CLASSES = 32, 7


def tiny_model_cfg():
    c = tiny_pretrain_config("", objective="wsp")
    c.wsp.num_classes = CLASSES
    return c


def random_maws_state_dict(rng):
    """A MAWS-layout (timm VisionTransformer) state dict: a random encoder plus pre_logits.fc / head tensors."""
    c = tiny_model_cfg()
    arch = encoder_arch(c.model)
    d = WIDTH
    enc = {"patch_embed": {"kernel": rng.normal(size=(8, 8, 3, d)), "bias": rng.normal(size=d)},
           "cls_token": rng.normal(size=(1, 1, d)),
           "norm": {"scale": rng.normal(size=d), "bias": rng.normal(size=d)},
           "blocks": {"layers": {
               "attn": {n: {"kernel": rng.normal(size=(1, d, 2, d // 2)), "bias": rng.normal(size=(1, 2, d // 2))}
                        for n in ("query", "key", "value")} | {
                   "out": {"kernel": rng.normal(size=(1, 2, d // 2, d)), "bias": rng.normal(size=(1, d))}},
               "mlp": {"fc1": {"kernel": rng.normal(size=(1, d, 64)), "bias": rng.normal(size=(1, 64))},
                       "fc2": {"kernel": rng.normal(size=(1, 64, d)), "bias": rng.normal(size=(1, d))}},
               "norm1": {"scale": rng.normal(size=(1, d)), "bias": rng.normal(size=(1, d))},
               "norm2": {"scale": rng.normal(size=(1, d)), "bias": rng.normal(size=(1, d))}}}}
    sd = timm_state_dict(enc, arch)
    sd["pos_embed"] = rng.normal(size=(1, 17, d)).astype(np.float32)  # MAWS: a learned table
    sd.update({"pre_logits.fc.weight": rng.normal(size=(d, d)), "pre_logits.fc.bias": rng.normal(size=d),
               "head.weight": rng.normal(size=(CLASSES, d)), "head.bias": rng.normal(size=CLASSES)})
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def test_maws_pth_imports_encoder_and_head_and_the_head_matches_numpy(tmp_path):
    """torch.save'd MAWS keys -> load_any: learned positions, the head; logits vs float64 tanh(x W1' + b1) W2' + b2."""
    rng = np.random.default_rng(0)
    sd = random_maws_state_dict(rng)
    path = str(tmp_path / "vit_maws.pt")
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    arch, _, params = load_any(path, heads=2)
    assert arch.positions == "learned" and arch.width == WIDTH
    np.testing.assert_array_equal(params["encoder"]["pos_embed"], sd["pos_embed"][0])
    head = params["head"]
    assert head["out"]["kernel"].shape == (WIDTH, CLASSES)
    x = rng.normal(size=(5, WIDTH)).astype(np.float32)
    padded = pad_head(head)
    logits = WSPHead(CLASSES).apply({"params": padded}, x)
    assert logits.shape == (5, padded_classes(CLASSES))
    x64 = x.astype(np.float64)
    ref = np.tanh(x64 @ sd["pre_logits.fc.weight"].T.astype(np.float64) + sd["pre_logits.fc.bias"]) \
        @ sd["head.weight"].T.astype(np.float64) + sd["head.bias"]
    np.testing.assert_allclose(np.asarray(logits)[:, :CLASSES], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(logits)[:, CLASSES:], 0.0)


def test_a_head_of_the_wrong_shape_is_one_line():
    sd = {"pre_logits.fc.weight": np.zeros((4, 8)), "pre_logits.fc.bias": np.zeros(4),
          "head.weight": np.zeros((3, 4)), "head.bias": np.zeros(3)}
    with pytest.raises(ConfigError, match=r"this file's pre_logits.fc.weight is \(4, 8\) and head.weight \(3, 4\)"):
        import_head(sd)
    assert import_head({"head.weight": np.zeros((3, 4)), "head.bias": np.zeros(3)}) is None  # a plain classifier


@pytest.mark.slow
def test_wsp_run_exports_timm_maws_keys_and_reimports(tmp_path):
    """A WSP run -> --format=timm: exactly timm's encoder keys (learned pos_embed) + pre_logits.fc / head of the
    real classes; reading the file back gives the run's encoder and head."""
    c = tiny_model_cfg()
    run_dir = str(tmp_path / "run")
    params = make_run_dir(run_dir, c, seed=3, step=2)
    out = str(tmp_path / "wsp.safetensors")
    summary = convert(run_dir, out, "timm")
    assert "encoder + head" in summary and "learned positions" in summary
    from safetensors.numpy import load_file
    sd = load_file(out)
    assert set(sd) == expected_keys(TIMM, "", 1, False) | set(HEAD_KEYS)
    assert sd["head.weight"].shape == (CLASSES, WIDTH) and sd["pos_embed"].shape == (1, 17, WIDTH)
    np.testing.assert_array_equal(sd["pos_embed"][0], params["encoder"]["pos_embed"])
    _, _, back = load_any(out, heads=2)
    jax.tree.map(np.testing.assert_array_equal, back["head"], unpad_head(params["head"], CLASSES))
    jax.tree_util.tree_map_with_path(lambda p, a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=str(p)), back["encoder"],
                 params["encoder"])
