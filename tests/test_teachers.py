"""Teacher targets (Lu et al.): Eq. 1 against numpy float64, frozen teacher outside the optimizer, grid handling."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import linen as nn

from conftest import tiny_pretrain_config
from mim_jax.convert.native import save_native
from mim_jax.data.transforms import normalize
from mim_jax.errors import ConfigError
from mim_jax.models.teachers import (
    TeacherViT,
    ViTArch,
    interpolate_positions,
    teacher_inputs,
    torch_bicubic_matrix,
)
from mim_jax.objectives import targets as objectives
from mim_jax.objectives.registry import validate
from mim_jax.parallel.sharding import global_batch, make_mesh
from mim_jax.train.program import build_program
from mim_jax.train.runs import read_run_params
from mim_jax.train.step import step_key

BATCH = 16
# A CLIP-style tower (QuickGELU, eps 1e-5, no patch bias, ln_pre, projection) at 32 px / patch 16 = grid 2;
# the tiny student (32 px, patch 8) has a 4x4 grid, so the teacher runs at 64 px with positions 2x2 -> 4x4.
TINY_CLIP = ViTArch(32, 2, 2, 64, 16, 2, ln_eps=1e-5, activation="quick_gelu", patch_bias=False,
                    positions="learned", ln_pre=True, proj_dim=24)


def eq1_reference(pred: np.ndarray, target: np.ndarray) -> float:
    """Lu et al. Eq. 1 in float64: per token ||p/|p| - t/|t|||^2, averaged over tokens and batch."""
    p = pred.astype(np.float64)
    t = target.astype(np.float64)
    p /= np.linalg.norm(p, axis=-1, keepdims=True)
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    return float(np.mean(np.sum((p - t) ** 2, axis=-1)))


def test_eq1_loss_matches_float64_reference():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=(3, 17, 24)).astype(np.float32) * rng.uniform(0.1, 10, size=(3, 17, 1)).astype(np.float32)
    target = rng.normal(size=(3, 17, 24)).astype(np.float32)
    loss = float(objectives.teacher_feature_loss(jnp.asarray(pred), jnp.asarray(target)))
    assert loss == pytest.approx(eq1_reference(pred, target), rel=1e-6)
    # Scale-invariant on both sides; zero when the directions agree; no gradient into the target.
    assert float(objectives.teacher_feature_loss(jnp.asarray(pred), 3.0 * jnp.asarray(pred))) < 1e-10
    grad_t = jax.grad(lambda t: objectives.teacher_feature_loss(jnp.asarray(pred), t))(jnp.asarray(target))
    assert not np.any(np.asarray(grad_t))


def random_teacher_file(path, arch: ViTArch = TINY_CLIP, seed: int = 1) -> str:
    """A random-init teacher in the mim_jax weights format (what `python -m mim_jax.convert` writes)."""
    module = TeacherViT(arch, dtype=jnp.float32)
    size = arch.grid_size * arch.patch_size
    params = nn.unbox(module.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)))["params"])
    save_native({"encoder": jax.device_get(params)}, arch, str(path))
    return str(path)


def teacher_config(dataset_dir: str, weights: str, steps: int = 3):
    c = tiny_pretrain_config(dataset_dir, total_steps=steps)
    c.objective = "mae_teacher"
    c.teacher.update(dict(type="clip", weights=weights, dtype="float32"))
    c.data.global_batch_size = BATCH
    return c


@pytest.mark.slow
@pytest.mark.fake_devices
def test_teacher_params_frozen_and_outside_optimizer(tmp_path):
    from mim_jax.convert.teacher_weights import load_teacher_params
    c = teacher_config("", random_teacher_file(tmp_path / "clip.safetensors"))
    c.data.source = "synthetic"
    validate(c, check_data_path=False)
    mesh = make_mesh(ml_collections.ConfigDict(dict(shape=(2, 1, 1))), jax.devices()[:2])
    program = build_program(c, mesh)
    assert program.frozen.info["image_size"] == 64 and program.frozen.info["arch"].grid_size == 4
    assert program.model.decoder.out_dim == 24  # decoder predicts the teacher's projected features
    state, _ = program.init_state(c.seed)
    teacher = load_teacher_params(c.teacher, program.frozen, mesh, program.rules, read_run_params)
    before = jax.device_get(teacher)
    # Position table interpolated 2x2 -> 4x4 at load (CLS row kept).
    assert before["pos_embed"].shape == (17, 32)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8)
    batch = global_batch({"image": images, "label": np.zeros(BATCH, np.int32)}, mesh, program.rules)
    initial = jax.device_get(state.params)
    losses = []
    for _ in range(3):
        state, metrics = program.step(state, batch, teacher)
        losses.append(float(metrics["loss"]))
    # Step 0's loss is Eq. 1 of the student's predictions (step-0 mask) against the teacher's features.
    x = normalize(images)
    pred = program.model.apply({"params": initial}, x, jax.random.uniform(step_key(c.seed, 0), (BATCH, 16)))["pred_with_cls"]
    features = program.frozen.module.apply({"params": before}, teacher_inputs(images, program.frozen.info["arch"], 64))
    assert losses[0] == pytest.approx(eq1_reference(np.asarray(pred), np.asarray(features)), rel=1e-5)
    assert np.all(np.isfinite(losses)) and len(set(losses)) == 3
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), jax.device_get(state.params), initial)
    assert max(jax.tree.leaves(moved)) > 0  # the student did update
    after = jax.device_get(teacher)  # still readable: the teacher argument is not donated
    jax.tree.map(np.testing.assert_array_equal, after, before)
    # The optimizer state mirrors the student params only: no teacher-shaped leaf, same leaf count.
    student_shapes = sorted(x.shape for x in jax.tree.leaves(state.params))
    mu = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
          if hasattr(s, "mu")][0].mu
    assert sorted(x.shape for x in jax.tree.leaves(mu)) == student_shapes
    assert "teacher" not in str(jax.tree_util.tree_structure(state))
    assert (24,) not in [x.shape for x in jax.tree.leaves(state.params["encoder"])]
    # The plan lowers the same program: state donated, teacher a third, non-donated argument.
    state_info, _, teacher_info = program.lower(BATCH, 32).args_info[0]
    assert all(a.donated for a in jax.tree.leaves(state_info))
    assert not any(a.donated for a in jax.tree.leaves(teacher_info))
    assert len(jax.tree.leaves(teacher_info)) == len(jax.tree.leaves(before))



def test_torch_bicubic_matches_pytorch():
    torch = pytest.importorskip("torch", reason="the convert extra (torch) is needed for the PyTorch reference")
    rng = np.random.default_rng(0)
    table = rng.normal(size=(1 + 14 * 14, 8)).astype(np.float32)
    for new in (16, 10):
        ours = interpolate_positions(table, new)
        grid = torch.from_numpy(table[1:].astype(np.float64)).reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
        ref = torch.nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
        ref = ref.permute(0, 2, 3, 1).reshape(new * new, 8).numpy()
        np.testing.assert_allclose(ours[1:], ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ours[:1], table[:1])
    np.testing.assert_allclose(torch_bicubic_matrix(5, 7).sum(axis=1), 1.0, rtol=1e-12)


def test_teacher_config_errors_name_the_field(tmp_path):
    c = teacher_config("", "")
    c.data.source = "synthetic"
    with pytest.raises(ConfigError, match="teacher.weights"):
        validate(c)
    c.teacher.weights = str(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="teacher.weights.*no such file"):
        validate(c)
    c.teacher.update(dict(weights="", feature="penultimate"))
    with pytest.raises(ConfigError, match="teacher.feature"):
        validate(c, check_data_path=False)
    c.teacher.feature, c.objective = "final", "dino_only"
    with pytest.raises(ConfigError, match="objective"):
        validate(c, check_data_path=False)


@pytest.mark.slow
def test_h14_student_runs_a_b16_clip_teacher_on_its_grid():
    """configs/pretrain.py:model=H/14,target=clip: 16x16 student grid at 224 px -> the /16 teacher at 256 px."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("pretrain_cfg", "configs/pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("model=H/14,target=clip,batch=8")
    assert (c.objective, c.teacher.type) == ("mae_teacher", "clip")
    validate(c, check_data_path=False)  # no weights: B/16 CLIP shapes, for plans
    c.mesh.shape = (1, 1, 1)
    program = build_program(c, make_mesh(c.mesh, jax.devices()[:1]))
    assert (program.frozen.info["image_size"], program.frozen.info["arch"].grid_size, program.frozen.info["arch"].patch_size) == \
        (256, 16, 16)
    assert program.frozen.abstract_params["pos_embed"].shape == (1 + 16 * 16, 768)
    assert program.frozen.abstract_params["proj"].dtype == jnp.bfloat16
    assert program.model.decoder.out_dim == 512
    with pytest.raises(ValueError, match="target='pixels'"):
        module.get_config("target=pixels")


@pytest.mark.slow
def test_a_teacher_run_reloads_with_its_feature_decoder(tmp_path):
    """Evaluation rebuilds a mae_teacher run's MAE with the teacher-width prediction head (not p*p*3 pixels)."""
    from mim_jax.train.program import build_model as run_model
    c = teacher_config("", random_teacher_file(tmp_path / "clip.safetensors"))
    assert run_model(ml_collections.ConfigDict(c.to_dict())).decoder.out_dim == 24
    c.teacher.feature = "last_block"
    assert run_model(c).decoder.out_dim == 32
    c.objective = "mae"
    assert run_model(c).decoder.out_dim == 8 * 8 * 3


@pytest.mark.slow
def test_mae_run_teacher_equals_the_encoder_it_loads():
    """A sin-cos TeacherViT on an Encoder's params (the mae_run teacher) computes exactly that Encoder's forward."""
    from mim_jax.models.teachers import encoder_arch
    from mim_jax.models.vit import encoder_from_config
    c = tiny_pretrain_config("")
    encoder = encoder_from_config(c.model)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    params = nn.unbox(encoder.init(jax.random.key(3), images)["params"])
    teacher = TeacherViT(encoder_arch(c.model), "final", jnp.float32)
    np.testing.assert_allclose(np.asarray(teacher.apply({"params": params}, images)),
                               np.asarray(encoder.apply({"params": params}, images)), rtol=1e-6, atol=1e-6)
