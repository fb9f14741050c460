"""Config files load and validate; each bad value is rejected with its field named."""
import pytest

from mim_jax.config import defaults, validation
from mim_jax.config.cli import explain_unknown_override, load_config_file
from mim_jax.config.validation import ConfigError
from mim_jax.objectives import registry


@pytest.mark.parametrize("spec", ["configs/demo.py", "configs/pretrain.py:model=L/16", "configs/pretrain.py:model=6.5B/14,batch=4096"])
def test_shipped_configs_validate(spec):
    config = load_config_file(spec)
    if config.data.source == "arrayrecord":
        config.data.path = "/data/imagenet"
    registry.validate(config)


def test_paper_config_schedule():
    config = load_config_file("configs/pretrain.py:model=H/14,batch=4096")
    assert config.model.variant == "H/14"
    assert config.total_steps == 800 * 1_281_167 // 4096 and config.optim.warmup_steps == 40 * 1_281_167 // 4096


@pytest.mark.parametrize("model", ["B/16", "L/16", "H/14", "2B/14", "6.5B/14"])
def test_paper_sizes_name_a_planned_slice(model):
    """Every paper size at batch 4096 carries a v5p slice whose chip count its mesh fills."""
    import math

    from mim_jax.cluster.plan import parse_topology
    config = load_config_file(f"configs/pretrain.py:model={model},recipe=maws")
    topology = parse_topology(config.plan.topology)
    assert topology.generation == "v5p" and config.data.global_batch_size == 4096
    shape = config.mesh.shape
    assert shape.count(-1) == 1 and topology.chips % math.prod(s for s in shape if s != -1) == 0
    assert config.model.dtype == ("float32" if model == "6.5B/14" else "bfloat16")
    assert config.total_steps == 3_000_000_000 // 4096 and config.optim.warmup_steps == config.total_steps // 20


def test_unknown_recipe_is_named():
    with pytest.raises(ValueError, match=r"recipe='bert'; use one of \('mae', 'maws'\)"):
        load_config_file("configs/pretrain.py:model=B/16,recipe=bert")


@pytest.mark.parametrize("field,value,message", [
    ("total_steps", 0, "total_steps=0: must be a positive integer"),
    ("optim.grad_accum_steps", 0, "optim.grad_accum_steps=0: must be a positive integer"),
    ("mesh.max_replicated_fraction", 1.5, "mesh.max_replicated_fraction=1.5: must lie in [0, 1]"),
    ("model.variant", "XL/16", "model.variant='XL/16': use one of"),
    ("mae.mask_ratio", 0.0, "must lie in (0, 1)"),
    ("model.dtype", "float16", "model.dtype='float16'"),
    ("model.remat", "some", "model.remat='some'"),
    ("model.image_size", 70, "multiple of the patch size 16"),
    ("data.global_batch_size", -4, "data.global_batch_size=-4"),
    ("data.source", "s3", "data.source='s3'"),
    ("data.crop_scale", (0.5, 0.2), "data.crop_scale=(0.5, 0.2)"),
    ("data.max_labels", -1, "data.max_labels=-1: must be an integer >= 0"),
    ("data.auto_augment", "rand-x9", "data.auto_augment='rand-x9': unknown section 'x9'"),
    ("data.auto_augment", "autoaug", "data.auto_augment='autoaug': only RandAugment ('rand-...') is supported"),
    ("ckpt.every_steps", 0, "ckpt.every_steps=0"),
    ("evals.linear_probe.pool", "max", "evals.linear_probe.pool='max'"),
    ("optim.nonfinite", "ignore", "optim.nonfinite='ignore': use one of ('stop', 'skip')"),
    ("optim.max_consecutive_skips", 0, "optim.max_consecutive_skips=0: must be a positive integer"),
    ("init_from", "/nonexistent/run", "init_from='/nonexistent/run': does not exist"),
    ("ckpt.resume_from", "/nonexistent/run", "ckpt.resume_from='/nonexistent/run': is not a directory"),
])
def test_validation_names_the_field(field, value, message):
    config = load_config_file("configs/demo.py")
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError) as err:
        registry.validate(config)
    assert message in str(err.value)


def test_arrayrecord_needs_a_path():
    config = load_config_file("configs/demo.py")
    config.data.source = "arrayrecord"
    with pytest.raises(ConfigError, match="data.path=''"):
        registry.validate(config)


def test_unknown_override_explained():
    msg = explain_unknown_override(["prog", "--config=configs/demo.py", "--config.optim.base_lrr=1"])
    assert "config.optim has no field 'base_lrr'" in msg and "did you mean --config.optim.base_lr?" in msg


def test_workdir_checks(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    with pytest.raises(ConfigError, match="is a file"):
        validation.check_workdir(str(f))
    assert validation.check_workdir(str(tmp_path / "new")) == str(tmp_path / "new")


@pytest.mark.parametrize("subset,message", [
    (dict(kind="nested"), "data.subset.kind='nested': use one of"),
    (dict(kind="random"), "data.subset.count=0: kind=random needs exactly one of"),
    (dict(kind="random", count=10, fraction=0.5), "data.subset.count=10: kind=random needs exactly one of"),
    (dict(kind="balanced"), "data.subset.fraction=0.0: kind=balanced needs the share"),
    (dict(kind="balanced", fraction=1.5), "data.subset.fraction=1.5: must lie in [0, 1]"),
    (dict(kind="classes"), "data.subset.num_classes=0: kind=classes needs the number"),
    (dict(kind="random", count=-1), "data.subset.count=-1: must be an integer >= 0"),
])
def test_subset_validation_names_the_field(subset, message):
    config = load_config_file("configs/demo.py")
    config.data.subset.update(subset)
    with pytest.raises(ConfigError) as err:
        registry.validate(config)
    assert message in str(err.value)


def test_subset_defaults_to_all_data_and_valid_kinds_pass():
    config = load_config_file("configs/demo.py")
    assert config.data.subset.kind == "all"
    for subset in (dict(kind="random", count=500), dict(kind="random", fraction=0.1),
                   dict(kind="balanced", fraction=0.1), dict(kind="classes", num_classes=100)):
        config.data.subset.update(dict(kind="all", count=0, fraction=0.0, num_classes=0) | subset)
        registry.validate(config)


def test_teacher_runs_refuse_the_pixel_validation_loss():
    config = defaults.base_config()
    config.objective = "mae_teacher"
    config.teacher.type = "mae_run"
    config.evals.val_loss.every_steps = 100
    with pytest.raises(ConfigError, match=r"evals.val_loss.type='recon_loss': does not apply to objective="
                                          r"'mae_teacher' \(it supports \['fewshot', 'finetune', 'knn', 'linear_probe', "
                                          r"'objective_loss'\]\)"):
        registry.validate(config, check_data_path=False)
    config.evals.val_loss.every_steps = 0
    registry.validate(config, check_data_path=False)
