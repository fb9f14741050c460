"""Validation of the shared config fields, with errors that name the field and the fix.

Each objective checks its own block (`Objective.validate`); `mim_jax.objectives.registry.validate` runs both.
"""
from __future__ import annotations

import ml_collections

from mim_jax import workdir as run_dirs
from mim_jax.config.run_config import RENAMED
from mim_jax.data import randaugment
from mim_jax.errors import ConfigError
from mim_jax.models import backbones
from mim_jax.models.vit import ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES, VIT_SIZES
from mim_jax.train.nonfinite import NONFINITE_POLICIES
from mim_jax.train.optim import SCHEDULES

DTYPES = ("float32", "bfloat16")
DATA_SOURCES = ("arrayrecord", "synthetic")
POOLS = ("cls", "mean")
EVAL_TYPES = ("linear_probe", "knn", "fewshot", "recon_loss", "finetune", "objective_loss")


def require(ok: bool, field: str, value, fix: str) -> None:
    """Raise ConfigError('field=value: fix') unless `ok`."""
    if not ok:
        raise ConfigError(f"{field}={value!r}: {fix}")


def positive_int(cfg, path: str, prefix: str = "") -> None:
    """Require cfg[path] (dotted) to be a positive integer; the message names prefix + path."""
    value = cfg
    for part in path.split("."):
        value = value[part]
    field = prefix + path
    require(isinstance(value, int) and value > 0, field, value, f"must be a positive integer, "
            f"e.g. --config.{field}=100")


def check_renamed(config: ml_collections.ConfigDict) -> None:
    """A field that moved into an objective's block fails in one line naming the new name."""
    for old, new in RENAMED.items():
        block, field = old.split(".")
        if field in config.get(block, {}):
            raise ConfigError(f"{old} is now {new}: set --config.{new}=... (or c.{new} in the config file) "
                              f"instead")


def validate_model(model: ml_collections.ConfigDict) -> None:
    """Check the encoder/decoder fields (the backbone family checks its own size and geometry)."""
    backbone = backbones.get(model)
    if backbone.name != "vit":
        require(model.mlp_dim == 0 and model.depth == 0, "model.depth", model.depth,
                f"model.family={backbone.name!r} takes its depths from model.variant; leave model.depth and "
                f"model.mlp_dim at 0")
    require(backbone.name != "vit" or model.variant in VIT_SIZES, "model.variant", model.variant,
            f"use one of {sorted(VIT_SIZES)}")
    require(model.dtype in DTYPES, "model.dtype", model.dtype, f"use one of {DTYPES}")
    require(model.remat in REMAT_POLICIES, "model.remat", model.remat, f"use one of {REMAT_POLICIES}")
    require(isinstance(model.scan_unroll, int) and model.scan_unroll >= 1, "model.scan_unroll", model.scan_unroll,
            "must be a positive integer (1 = a rolled scan; >= depth = fully unrolled)")
    require(model.attention in ATTENTION_IMPLEMENTATIONS, "model.attention", model.attention,
            f"use one of {tuple(ATTENTION_IMPLEMENTATIONS)}")
    backbone.validate(model)
    for name in ("width", "depth", "heads", "mlp_dim", "patch_size"):
        require(model[name] >= 0, f"model.{name}", model[name], "use 0 (size table) or a positive integer")
    require(0.0 <= model.drop_path < 1.0, "model.drop_path", model.drop_path, "must lie in [0, 1), e.g. 0.1")


def validate_data(data: ml_collections.ConfigDict, check_path: bool = True) -> None:
    """Check the input-pipeline fields (the dataset itself is checked when it is opened)."""
    positive_int(data, "global_batch_size", "data.")
    require(data.source in DATA_SOURCES, "data.source", data.source, f"use one of {DATA_SOURCES}")
    require(not check_path or data.source != "arrayrecord" or bool(data.path), "data.path", data.path,
             "set --config.data.path=DIR (a directory written by mim_jax.data) or --config.data.source=synthetic")
    lo, hi = data.crop_scale
    require(0 < lo <= hi <= 1, "data.crop_scale", tuple(data.crop_scale), "needs 0 < min <= max <= 1")
    lo, hi = data.crop_ratio
    require(0 < lo <= hi, "data.crop_ratio", tuple(data.crop_ratio), "needs 0 < min <= max")
    require(data.num_workers >= 0, "data.num_workers", data.num_workers, "must be >= 0")
    require(isinstance(data.max_labels, int) and data.max_labels >= 0, "data.max_labels", data.max_labels,
            "must be an integer >= 0 (0 = no label sets in batches; e.g. 16 for web tags)")
    randaugment.parse_spec(data.get("auto_augment", ""), "data.auto_augment")
    validate_subset(data.subset)


def validate_subset(subset: ml_collections.ConfigDict, prefix: str = "data.subset") -> None:
    """Check the subset fields: the kind, and that exactly the size field the kind needs is set."""
    kinds = ("all", "random", "balanced", "classes")
    require(subset.kind in kinds, f"{prefix}.kind", subset.kind, f"use one of {kinds}")
    require(isinstance(subset.count, int) and subset.count >= 0, f"{prefix}.count", subset.count,
             "must be an integer >= 0")
    require(0.0 <= subset.fraction <= 1.0, f"{prefix}.fraction", subset.fraction, "must lie in [0, 1]")
    require(isinstance(subset.num_classes, int) and subset.num_classes >= 0, f"{prefix}.num_classes",
             subset.num_classes, "must be an integer >= 0")
    require(isinstance(subset.seed, int), f"{prefix}.seed", subset.seed, "must be an integer")
    if subset.kind == "random":
        require((subset.count > 0) != (subset.fraction > 0), f"{prefix}.count", subset.count,
                 f"kind=random needs exactly one of {prefix}.count > 0 or {prefix}.fraction > 0 "
                 f"(fraction={subset.fraction})")
    if subset.kind == "balanced":
        require(subset.fraction > 0, f"{prefix}.fraction", subset.fraction,
                 "kind=balanced needs the share of every class, e.g. 0.1")
    if subset.kind == "classes":
        require(subset.num_classes > 0, f"{prefix}.num_classes", subset.num_classes,
                 "kind=classes needs the number of classes, e.g. 100")


def validate_probe(probe: ml_collections.ConfigDict, prefix: str) -> None:
    """Check linear-probe fields; `prefix` is where they live in the config (for messages)."""
    require(probe.pool in POOLS, f"{prefix}.pool", probe.pool, f"use one of {POOLS}")
    for name in ("epochs", "batch_size", "feature_batch_size"):
        require(isinstance(probe[name], int) and probe[name] > 0, f"{prefix}.{name}", probe[name],
                 "must be a positive integer")
    require(probe.max_train_examples >= 0, f"{prefix}.max_train_examples", probe.max_train_examples,
             "use 0 (all) or a positive count")


def _check_whitening(e: ml_collections.ConfigDict, prefix: str) -> None:
    _check_positive(e, prefix, ("whiten_eps",), integer=False)  # `whiten` is a bool field: ConfigDict checks it


def _check_feature_eval(e: ml_collections.ConfigDict, prefix: str) -> None:
    require(e.pool in POOLS, f"{prefix}.pool", e.pool, f"use one of {POOLS}")
    require(isinstance(e.feature_batch_size, int) and e.feature_batch_size > 0, f"{prefix}.feature_batch_size",
             e.feature_batch_size, "must be a positive integer")
    require(isinstance(e.max_train_examples, int) and e.max_train_examples >= 0, f"{prefix}.max_train_examples",
             e.max_train_examples, "use 0 (all) or a positive count")


def _check_positive(e: ml_collections.ConfigDict, prefix: str, names: tuple, integer: bool) -> None:
    for name in names:
        ok = isinstance(e[name], int) if integer else isinstance(e[name], (int, float))
        require(ok and e[name] > 0, f"{prefix}.{name}", e[name], "must be a positive " +
                 ("integer" if integer else "number"))


def validate_eval(e: ml_collections.ConfigDict, prefix: str) -> None:
    """Check one evaluator's fields (by its `type`); `prefix` is where they live, e.g. evals.knn."""
    require(e.get("type") in EVAL_TYPES, f"{prefix}.type", e.get("type"), f"use one of {EVAL_TYPES}")
    require(isinstance(e.every_steps, int) and e.every_steps >= 0, f"{prefix}.every_steps", e.every_steps,
             "use 0 (never periodically) or a positive step count")
    if e.type == "linear_probe":
        validate_probe(e, prefix)
    elif e.type == "knn":
        _check_feature_eval(e, prefix)
        _check_whitening(e, prefix)
        _check_positive(e, prefix, ("k",), integer=True)
        _check_positive(e, prefix, ("temperature",), integer=False)
    elif e.type == "fewshot":
        _check_feature_eval(e, prefix)
        _check_whitening(e, prefix)
        require(len(e.shots) > 0 and all(isinstance(n, int) and n > 0 for n in e.shots), f"{prefix}.shots",
                 tuple(e.shots), "use positive shot counts, e.g. (1, 5, 10, 25)")
        require(len(e.seeds) > 0, f"{prefix}.seeds", tuple(e.seeds), "use at least one seed, e.g. (0, 1, 2)")
        _check_positive(e, prefix, ("l2_reg",), integer=False)
    elif e.type in ("recon_loss", "objective_loss"):
        _check_positive(e, prefix, ("batch_size",), integer=True)
        require(isinstance(e.max_examples, int) and e.max_examples >= 0, f"{prefix}.max_examples", e.max_examples,
                 "use 0 (all) or a positive count")
    else:
        validate_finetune(e, prefix)


def validate_finetune(e: ml_collections.ConfigDict, prefix: str) -> None:
    """Check fine-tuning fields."""
    _check_positive(e, prefix, ("epochs", "batch_size", "eval_batch_size"), integer=True)
    _check_positive(e, prefix, ("base_lr",), integer=False)
    require(0 <= e.warmup_epochs <= e.epochs, f"{prefix}.warmup_epochs", e.warmup_epochs,
             f"must lie in [0, {prefix}.epochs={e.epochs}]")
    require(0 < e.layer_decay <= 1, f"{prefix}.layer_decay", e.layer_decay, "must lie in (0, 1], e.g. 0.75")
    for name in ("drop_path", "label_smoothing", "random_erase_prob", "ema_decay", "mixup_switch_prob"):
        require(0 <= e[name] < 1 or (name == "mixup_switch_prob" and e[name] == 1), f"{prefix}.{name}", e[name],
                 "must lie in [0, 1)")
    for name in ("mixup_alpha", "cutmix_alpha", "weight_decay", "min_lr"):
        require(e[name] >= 0, f"{prefix}.{name}", e[name], "must be >= 0")
    lo, hi = e.crop_scale
    require(0 < lo <= hi <= 1, f"{prefix}.crop_scale", tuple(e.crop_scale), "needs 0 < min <= max <= 1")
    require(isinstance(e.num_workers, int) and e.num_workers >= 0, f"{prefix}.num_workers", e.num_workers,
             "must be >= 0")
    randaugment.parse_spec(e.auto_augment, f"{prefix}.auto_augment")


def validate_evals(evals: ml_collections.ConfigDict) -> None:
    """Check every entry of config.evals."""
    for name in evals:
        validate_eval(evals[name], f"evals.{name}")


def validate_common(config: ml_collections.ConfigDict, check_data_path: bool = True) -> None:
    """Validate the fields every pretraining config shares; raises ConfigError naming the first bad field.

    `check_data_path=False` is for programs that only compile the step (e.g. the memory plan).
    """
    check_renamed(config)
    require(isinstance(config.seed, int), "seed", config.seed, "must be an integer")
    positive_int(config, "total_steps")
    validate_model(config.model)
    validate_data(config.data, check_data_path)
    for field in ("ckpt.every_steps", "ckpt.max_to_keep", "log.every_steps"):
        positive_int(config, field)
    require(config.optim.base_lr > 0, "optim.base_lr", config.optim.base_lr, "must be > 0")
    positive_int(config, "optim.grad_accum_steps")
    require(0 <= config.mesh.max_replicated_fraction <= 1, "mesh.max_replicated_fraction",
            config.mesh.max_replicated_fraction, "must lie in [0, 1], e.g. 0.02")
    require(config.optim.warmup_steps >= 0, "optim.warmup_steps", config.optim.warmup_steps, "must be >= 0")
    require(config.optim.schedule in SCHEDULES, "optim.schedule", config.optim.schedule, f"use one of {SCHEDULES}")
    require(0 < config.optim.step_decay_at <= 1, "optim.step_decay_at", config.optim.step_decay_at,
            "must lie in (0, 1], e.g. 0.875")
    require(0 < config.optim.step_decay_factor <= 1, "optim.step_decay_factor", config.optim.step_decay_factor,
            "must lie in (0, 1], e.g. 0.1")
    validate_evals(config.evals)
    validate_fault_tolerance(config, check_data_path)


def validate_fault_tolerance(config: ml_collections.ConfigDict, check_paths: bool = True) -> None:
    """Check the non-finite policy and the resume / init paths (the paths only with `check_paths`).

    Programs that only compile or submit the step (plan, launchers, a study's dry run) skip the path checks: the
    weights may live where only the job sees them, or be written by an earlier cell of the same study.
    """
    require(config.optim.nonfinite in NONFINITE_POLICIES, "optim.nonfinite", config.optim.nonfinite,
             f"use one of {NONFINITE_POLICIES}")
    positive_int(config, "optim.max_consecutive_skips")
    keep = tuple(config.ckpt.get("keep_steps", ()))
    require(all(isinstance(s, int) and 0 < s <= config.total_steps for s in keep), "ckpt.keep_steps", keep,
            f"use steps in [1, total_steps={config.total_steps}], e.g. (875, 1750)")
    if not check_paths:
        return
    require(not config.ckpt.resume_from or run_dirs.is_dir(run_dirs.resolve(config.ckpt.resume_from)),
             "ckpt.resume_from", config.ckpt.resume_from,
             "is not a directory; pass a pretraining workdir or WORKDIR/checkpoints/<step>, or leave it empty")
    require(not config.init_from or run_dirs.exists(run_dirs.resolve(config.init_from)), "init_from",
             config.init_from, "does not exist; pass a pretraining workdir, WORKDIR/checkpoints/<step>, or a weights "
             "file python -m mim_jax.convert reads (.pth / .safetensors), or leave it empty")


def check_workdir(workdir: str) -> str:
    """Absolute workdir path (or a gs:// URL); errors if it is a file or cannot be created."""
    if not workdir:
        raise ConfigError("--workdir is required, e.g. --workdir=workdirs/my_run")
    path = run_dirs.resolve(workdir)
    if run_dirs.exists(path) and not run_dirs.is_dir(path):
        raise ConfigError(f"--workdir={workdir} is a file, not a directory; pass a directory path")
    run_dirs.make_dirs(path)
    return path
