"""Evaluating straight from a weights file: learned-position encoders, grid changes, refusals, CLI equivalence."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import linen as nn

from conftest import make_run_dir, tiny_pretrain_config
from mim_jax.config.cli import load_config_file
from mim_jax.convert.__main__ import convert
from mim_jax.convert.native import save_native
from mim_jax.errors import ConfigError
from mim_jax.evaluate import finetune as ft
from mim_jax.evaluate.__main__ import evaluate
from mim_jax.evaluate.weights_file import load_weights_file
from mim_jax.models.teachers import TeacherViT, ViTArch, interpolate_positions
from mim_jax.parallel.sharding import logical_rules, make_mesh

pytestmark = pytest.mark.slow  # whole weights-file evaluations (tens of seconds)

MAWS_LIKE = ViTArch(32, 2, 2, 64, 8, 4, positions="learned")  # timm layout: learned positions, GELU, eps 1e-6
HF_DINO_LIKE = ViTArch(32, 2, 2, 64, 8, 4, positions="learned", ln_eps=1e-12)  # transformers ViTModel


def one_device():
    cfg = ml_collections.ConfigDict(dict(shape=(1, 1, 1), rules=tiny_pretrain_config("").mesh.rules))
    return make_mesh(cfg, jax.devices()[:1]), logical_rules(cfg)


def random_vit_file(path, arch: ViTArch) -> dict:
    """A mim_jax-format file of a randomly initialized ViT of `arch`; returns its host params."""
    size = arch.grid_size * arch.patch_size
    params = nn.unbox(TeacherViT(arch, dtype=jnp.float32).init(jax.random.key(3), jnp.zeros((1, size, size, 3))))
    params = jax.tree.map(np.asarray, params["params"])
    noise = np.random.default_rng(0).normal(size=params["pos_embed"].shape)
    params["pos_embed"] = (params["pos_embed"] + noise).astype(np.float32)
    save_native({"encoder": params}, arch, str(path))
    return params


@pytest.mark.parametrize("arch", [MAWS_LIKE, HF_DINO_LIKE], ids=["timm_eps1e-6", "hf_eps1e-12"])
def test_learned_position_encoder_matches_the_reference_vit(tmp_path, arch):
    """The evaluators' Encoder runs a MAWS/DINO-layout file exactly like TeacherViT (parity-tested vs transformers)."""
    host = random_vit_file(tmp_path / "maws.safetensors", arch)
    mesh, rules = one_device()
    model, params = load_weights_file(str(tmp_path / "maws.safetensors"), 0, mesh, rules)
    assert model.encoder.positions == "learned" and model.encoder.image_size == 32
    assert model.encoder.ln_eps == arch.ln_eps
    np.testing.assert_array_equal(np.asarray(params["encoder"]["pos_embed"]), host["pos_embed"])
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    ours = model.encoder.apply({"params": params["encoder"]}, images)
    reference = TeacherViT(arch, dtype=jnp.float32).apply({"params": host}, images)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), atol=1e-5)


def test_positions_are_resized_to_the_eval_resolution(tmp_path):
    host = random_vit_file(tmp_path / "maws.safetensors", MAWS_LIKE)
    mesh, rules = one_device()
    model, params = load_weights_file(str(tmp_path / "maws.safetensors"), 48, mesh, rules)
    assert model.encoder.grid_size == 6
    np.testing.assert_allclose(np.asarray(params["encoder"]["pos_embed"]),
                               interpolate_positions(host["pos_embed"], 6), atol=1e-6)
    with pytest.raises(ConfigError, match="image_size=44 is not a multiple of the checkpoint's patch size 8"):
        load_weights_file(str(tmp_path / "maws.safetensors"), 44, mesh, rules)


def test_random_init_baseline_has_the_file_architecture(tmp_path):
    host = random_vit_file(tmp_path / "maws.safetensors", MAWS_LIKE)
    mesh, rules = one_device()
    _, params = load_weights_file(str(tmp_path / "maws.safetensors"), 0, mesh, rules, random_init=True, seed=7)
    assert jax.tree.map(np.shape, params["encoder"]) == jax.tree.map(np.shape, host)
    assert not np.allclose(np.asarray(params["encoder"]["pos_embed"]), host["pos_embed"])


def test_clip_tower_is_refused_with_the_reason(tmp_path):
    clip_like = ViTArch(32, 1, 2, 64, 8, 4, ln_eps=1e-5, activation="quick_gelu", patch_bias=False,
                        positions="learned", ln_pre=True, proj_dim=16)
    random_vit_file(tmp_path / "clip.safetensors", clip_like)
    mesh, rules = one_device()
    with pytest.raises(ConfigError, match=r"activation='quick_gelu' \(ours 'gelu'\).*serve as a pretraining teacher"):
        load_weights_file(str(tmp_path / "clip.safetensors"), 0, mesh, rules)


@pytest.fixture(scope="module")
def run_and_files(tiny_dataset, tmp_path_factory):
    """A pretraining run dir (one checkpoint) and its encoder converted to the mim_jax and timm formats."""
    root = tmp_path_factory.mktemp("weights_file")
    run_dir = str(root / "run")
    make_run_dir(run_dir, tiny_pretrain_config(tiny_dataset), seed=0, step=3)
    files = {fmt: str(root / f"{fmt}.safetensors") for fmt in ("mim_jax", "timm")}
    for fmt, path in files.items():
        convert(run_dir, path, fmt)
    return run_dir, files


def knn_config(init_from: str, dataset: str = ""):
    c = load_config_file("configs/knn.py")
    c.init_from = init_from
    c.eval.update(dict(k=5, feature_batch_size=16))
    if dataset:
        c.data.update(dict(source="arrayrecord", path=dataset))
    return c


def test_knn_from_converted_files_equals_knn_from_the_run(run_and_files, tiny_dataset, tmp_path):
    run_dir, files = run_and_files
    from_run = evaluate(knn_config(run_dir), str(tmp_path / "run"))
    for fmt, path in files.items():
        from_file = evaluate(knn_config(path, tiny_dataset), str(tmp_path / fmt))
        assert (from_file["top1"], from_file["top5"]) == (from_run["top1"], from_run["top5"]), fmt
        assert from_file["step"] == "file" and from_file["init_from"] == path


def test_weights_file_needs_a_dataset_and_has_no_decoder(run_and_files, tiny_dataset, tmp_path):
    _, files = run_and_files
    with pytest.raises(ConfigError, match="is a weights file, which names no dataset: pass --config.data.source"):
        evaluate(knn_config(files["mim_jax"]), str(tmp_path))
    loss_cfg = load_config_file("configs/recon_loss.py")
    loss_cfg.init_from = files["mim_jax"]
    loss_cfg.data.update(dict(source="arrayrecord", path=tiny_dataset))
    with pytest.raises(ConfigError, match="recon_loss needs the decoder"):
        evaluate(loss_cfg, str(tmp_path))


def test_finetune_state_starts_from_a_learned_position_file(tmp_path):
    """A MAWS-layout file (learned positions) fills the fine-tuning model's encoder, pos_embed included."""
    host = random_vit_file(tmp_path / "maws.safetensors", MAWS_LIKE)
    mesh, rules = one_device()
    model, params = load_weights_file(str(tmp_path / "maws.safetensors"), 0, mesh, rules)
    classifier = ft.classifier_for(model.encoder, num_classes=10, drop_path=0.1)
    state = ft.init_state(classifier, optax.sgd(0.1), params["encoder"], mesh, rules, seed=0)
    got = jax.device_get(state.params["encoder"])
    host = {k: v for k, v in host.items() if k != "norm"}  # fine-tuning pools un-normed tokens into fc_norm
    assert jax.tree.map(np.shape, got) == jax.tree.map(np.shape, host)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(host)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
