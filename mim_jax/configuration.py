"""Config defaults shared by every pretraining config, and validation with errors that name the field."""
from __future__ import annotations


import ml_collections

from mim_jax import workdir as run_dirs
from mim_jax.data import randaugment
from mim_jax.errors import ConfigError  # noqa: F401  (re-exported: callers import it from here)
from mim_jax.models.teachers import FEATURES
from mim_jax.models.vit import ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES, VIT_SIZES
from mim_jax.nonfinite import NONFINITE_POLICIES
from mim_jax.sharding import DEFAULT_RULES

IMAGENET_TRAIN_SIZE = 1_281_167
DTYPES = ("float32", "bfloat16")
DATA_SOURCES = ("arrayrecord", "synthetic")
POOLS = ("cls", "mean")
OBJECTIVES = ("mae", "mae_teacher")
TEACHER_TYPES = ("clip", "dino", "mae_run")
TEACHER_FEATURES = FEATURES


def base_config() -> ml_collections.ConfigDict:
    """All pretraining fields with their defaults (the demo and study configs start from this)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 100_000
    c.objective = "mae"

    c.model = ml_collections.ConfigDict()
    c.model.variant = "B/16"          # key of mim_jax.models.vit.VIT_SIZES
    c.model.width = 0                 # 0 = from the size table; non-zero overrides it
    c.model.depth = 0
    c.model.heads = 0
    c.model.mlp_dim = 0
    c.model.patch_size = 0
    c.model.image_size = 224
    c.model.mask_ratio = 0.75
    c.model.norm_pix_loss = True
    c.model.dtype = "bfloat16"        # compute dtype; params, optimizer and loss stay float32
    c.model.remat = "none"            # none | full | save_dots
    c.model.attention = "xla"         # xla | cudnn (NVIDIA GPUs) | auto (jax picks; XLA in jax 0.10)
    c.model.scan_unroll = 1           # layers per scan iteration; >= depth unrolls the stacks (longer compile)
    c.model.decoder = ml_collections.ConfigDict(dict(width=512, depth=8, heads=16, mlp_ratio=4))

    c.data = ml_collections.ConfigDict()
    c.data.source = "arrayrecord"     # arrayrecord (a directory written by mim_jax.data) | synthetic
    c.data.path = ""                  # source=arrayrecord: a mim_jax dataset dir or a TFDS array_record dir
    c.data.train_split = "train"
    c.data.val_split = "val"
    c.data.global_batch_size = 4096
    c.data.crop_scale = (0.2, 1.0)
    c.data.crop_ratio = (3 / 4, 4 / 3)
    c.data.num_workers = 0            # grain worker processes per host (0 = in the main process)
    c.data.synthetic = ml_collections.ConfigDict(dict(num_train=20_000, num_val=2_500, image_size=72, seed=0))
    c.data.subset = subset_config()

    c.optim = ml_collections.ConfigDict()
    c.optim.base_lr = 1.5e-4          # lr = base_lr * global_batch_size / 256
    c.optim.min_lr = 0.0
    c.optim.warmup_steps = 40 * IMAGENET_TRAIN_SIZE // 4096
    c.optim.weight_decay = 0.05
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.grad_clip_norm = 0.0      # 0 = no clipping (MAE)
    c.optim.grad_accum_steps = 1      # micro-batches per step, accumulated inside the jitted step
    c.optim.nonfinite = "stop"        # non-finite loss: stop (naming the step) | skip (the update, counted)
    c.optim.max_consecutive_skips = 10  # with nonfinite=skip: stop after this many skipped updates in a row

    c.mesh = ml_collections.ConfigDict()
    c.mesh.shape = (-1, 1, 1)         # (data, fsdp, tensor); one -1 fills the remaining devices
    c.mesh.rules = DEFAULT_RULES
    c.mesh.max_replicated_fraction = 0.02  # with fsdp > 1: at most this share of parameter bytes unsharded

    c.ckpt = ml_collections.ConfigDict(dict(every_steps=1000, max_to_keep=3, async_save=True))
    c.ckpt.resume_from = ""           # another run's dir or DIR/checkpoints/<step>: full state, if WORKDIR has none
    c.init_from = ""                  # a run's dir or DIR/checkpoints/<step>: weights only, if nothing to resume
    c.init_from_subtree = "encoder"   # which params init_from loads ("" = all, "encoder", "decoder", ...)
    c.log = ml_collections.ConfigDict(dict(every_steps=50))

    c.plan = ml_collections.ConfigDict(dict(topology=""))  # TPU slice the config targets, e.g. v5p:8x8x4

    c.evals = default_evals()
    c.teacher = teacher_config()
    return c


def teacher_config() -> ml_collections.ConfigDict:
    """Frozen-teacher fields, used by objective='mae_teacher' (Lu et al. feature targets)."""
    t = ml_collections.ConfigDict()
    t.type = "clip"                   # clip | dino | mae_run (the encoder of an earlier run of this project)
    t.weights = ""                    # checkpoint file/dir (see README "Weights import/export"), or a run workdir
    t.feature = "final"               # final (after ln_post [+ CLIP projection]) | last_block (before the norm)
    t.dtype = "bfloat16"              # teacher params and forward; float32 for exact checks
    t.heads = 0                       # 0 = infer (file config or size table by width); needed for odd widths
    return t


def probe_config() -> ml_collections.ConfigDict:
    """Linear-probe fields (MAE protocol: BN without affine + linear, LARS, blr 0.1, 90 epochs)."""
    p = eval_schedule("linear_probe")
    p.pool = "cls"                    # cls (MAE protocol) | mean (of patch tokens)
    p.epochs = 90
    p.warmup_epochs = 10
    p.batch_size = 16384
    p.base_lr = 0.1                   # lr = base_lr * batch_size / 256
    p.max_train_examples = 0          # 0 = the whole train split
    p.feature_batch_size = 256
    return p


def subset_config() -> ml_collections.ConfigDict:
    """Training subset by hashing record keys (mim_jax.data.subsets); the default trains on all data."""
    s = ml_collections.ConfigDict()
    s.kind = "all"                    # all | random (count or fraction) | balanced (fraction per class) | classes
    s.count = 0                       # random: number of images (nested across counts for one seed)
    s.fraction = 0.0                  # random: share of the split; balanced: share of every class
    s.num_classes = 0                 # classes: how many classes (nested across counts for one seed)
    s.seed = 0                        # subset seed (independent of the training seed)
    return s


EVAL_TYPES = ("linear_probe", "knn", "fewshot", "recon_loss", "finetune")


def eval_schedule(eval_type: str) -> ml_collections.ConfigDict:
    """Fields every evaluator has: its type and when pretraining runs it (all off by default)."""
    e = ml_collections.ConfigDict()
    e.type = eval_type                # one of EVAL_TYPES
    e.every_steps = 0                 # > 0: run every N pretraining steps (-> metrics.jsonl and evals/<name>.json)
    e.at_end = False                  # run after the last pretraining step -> evals/<name>.json
    e.random_init_baseline = False    # at the end, also evaluate the same model at its random init
    return e


def knn_config() -> ml_collections.ConfigDict:
    """Weighted kNN on frozen features (DINO: cosine, k=20, T=0.07)."""
    e = eval_schedule("knn")
    e.pool = "cls"
    e.k = 20
    e.temperature = 0.07
    e.max_train_examples = 0          # 0 = the whole train split is the neighbour bank
    e.feature_batch_size = 256
    _whitening_fields(e)
    return e


def _whitening_fields(e: ml_collections.ConfigDict) -> None:
    """kNN / few-shot: optional PCA whitening fitted on the train features (mim_jax.evaluate.whitening)."""
    e.whiten = False                  # True: whiten features first (off = DINO / big_vision as published)
    e.whiten_eps = 1e-4               # eigenvalue floor, relative to the largest eigenvalue


def fewshot_config() -> ml_collections.ConfigDict:
    """Closed-form ridge on n examples per class of frozen features, averaged over seeds."""
    e = eval_schedule("fewshot")
    e.pool = "cls"
    e.shots = (1, 5, 10, 25)
    e.seeds = (0, 1, 2)
    e.l2_reg = 1.0                    # ridge penalty on l2-normalized features
    e.max_train_examples = 0          # shots are drawn from the first N train records (0 = all)
    e.feature_batch_size = 256
    _whitening_fields(e)
    return e


def recon_loss_config() -> ml_collections.ConfigDict:
    """MAE loss on the val split with fixed (seeded, step-independent) masks and the eval transform."""
    e = eval_schedule("recon_loss")
    e.batch_size = 256
    e.max_examples = 0                # 0 = the whole val split
    e.mask_seed = 0
    return e


def finetune_config(variant: str = "B/16") -> ml_collections.ConfigDict:
    """End-to-end fine-tuning, MAE recipe (He et al. 2022, Table 9) for the size of `variant`."""
    large = variant not in ("Ti/16", "S/16", "B/16")
    e = eval_schedule("finetune")
    e.epochs = 50 if large else 100
    e.warmup_epochs = 5
    e.batch_size = 1024
    e.base_lr = 1e-3 if large else 5e-4  # lr = base_lr * batch_size / 256
    e.min_lr = 1e-6
    e.weight_decay = 0.05
    e.b1, e.b2 = 0.9, 0.999
    e.layer_decay = 0.75 if large else 0.65
    e.drop_path = 0.2 if variant.startswith("H/") else 0.1
    e.label_smoothing = 0.1
    e.mixup_alpha = 0.8
    e.cutmix_alpha = 1.0
    e.mixup_switch_prob = 0.5         # probability of cutmix when both are on (timm)
    e.crop_scale = (0.08, 1.0)
    e.auto_augment = "rand-m9-mstd0.5-inc1"  # timm RandAugment spec on the host after crop + flip; "" = off
    e.random_erase_prob = 0.25
    e.ema_decay = 0.0                 # > 0: also evaluate an EMA of the weights
    e.eval_batch_size = 256
    e.num_workers = 0                 # grain worker processes for the train pipeline
    return e


def default_evals() -> ml_collections.ConfigDict:
    """config.evals: one entry per evaluator (name -> fields with `type`); none runs unless switched on."""
    evals = ml_collections.ConfigDict()
    evals.linear_probe = probe_config()
    evals.knn = knn_config()
    evals.fewshot = fewshot_config()
    evals.val_loss = recon_loss_config()
    return evals


def standalone_eval_config(name: str, evaluator: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A `python -m mim_jax.evaluate` config: where the model and data come from, and one evaluator (`eval`)."""
    c = ml_collections.ConfigDict()
    c.name = name                     # -> WORKDIR/evals/<name>.json
    c.init_from = ""                  # a pretraining workdir (latest step), WORKDIR/checkpoints/<step>, or a weights
    #                                   file mim_jax.convert reads (then set data.source / data.path too)
    c.random_init = False             # evaluate the run's model at its random init instead (a baseline)
    c.image_size = 0                  # weights files only: eval resolution (0 = the checkpoint's own)
    c.seed = 0
    c.data = base_config().data
    c.data.source = "same_as_pretraining"  # or arrayrecord / synthetic with the fields below
    c.mesh = base_config().mesh
    c.eval = evaluator
    return c


def _require(ok: bool, field: str, value, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{field}={value!r}: {fix}")


def _positive_int(cfg, path: str, prefix: str = "") -> None:
    value = cfg
    for part in path.split("."):
        value = value[part]
    field = prefix + path
    _require(isinstance(value, int) and value > 0, field, value, f"must be a positive integer, "
             f"e.g. --config.{field}=100")


def validate_model(model: ml_collections.ConfigDict) -> None:
    """Check the encoder/decoder fields."""
    _require(model.variant in VIT_SIZES, "model.variant", model.variant, f"use one of {sorted(VIT_SIZES)}")
    _require(0.0 < model.mask_ratio < 1.0, "model.mask_ratio", model.mask_ratio, "must lie in (0, 1), e.g. 0.75")
    _require(model.dtype in DTYPES, "model.dtype", model.dtype, f"use one of {DTYPES}")
    _require(model.remat in REMAT_POLICIES, "model.remat", model.remat, f"use one of {REMAT_POLICIES}")
    _require(isinstance(model.get("scan_unroll", 1), int) and model.get("scan_unroll", 1) >= 1, "model.scan_unroll",
             model.get("scan_unroll"), "must be a positive integer (1 = a rolled scan; >= depth = fully unrolled)")
    _require(model.get("attention", "xla") in ATTENTION_IMPLEMENTATIONS, "model.attention", model.get("attention"),
             f"use one of {tuple(ATTENTION_IMPLEMENTATIONS)}")
    patch = model.patch_size or VIT_SIZES[model.variant].patch_size
    _require(model.image_size > 0 and model.image_size % patch == 0, "model.image_size", model.image_size,
             f"must be a positive multiple of the patch size {patch}")
    for name in ("width", "depth", "heads", "mlp_dim", "patch_size"):
        _require(model[name] >= 0, f"model.{name}", model[name], "use 0 (size table) or a positive integer")
    dec = model.decoder
    for name in ("width", "depth", "heads", "mlp_ratio"):
        _positive_int(model, f"decoder.{name}", "model.")
    _require(dec.width % dec.heads == 0, "model.decoder.width", dec.width,
             f"must be divisible by model.decoder.heads={dec.heads}")


def validate_data(data: ml_collections.ConfigDict, check_path: bool = True) -> None:
    """Check the input-pipeline fields (the dataset itself is checked when it is opened)."""
    _positive_int(data, "global_batch_size", "data.")
    _require(data.source in DATA_SOURCES, "data.source", data.source, f"use one of {DATA_SOURCES}")
    _require(not check_path or data.source != "arrayrecord" or bool(data.path), "data.path", data.path,
             "set --config.data.path=DIR (a directory written by mim_jax.data) or --config.data.source=synthetic")
    lo, hi = data.crop_scale
    _require(0 < lo <= hi <= 1, "data.crop_scale", tuple(data.crop_scale), "needs 0 < min <= max <= 1")
    lo, hi = data.crop_ratio
    _require(0 < lo <= hi, "data.crop_ratio", tuple(data.crop_ratio), "needs 0 < min <= max")
    _require(data.num_workers >= 0, "data.num_workers", data.num_workers, "must be >= 0")
    validate_subset(data.subset)


def validate_subset(subset: ml_collections.ConfigDict, prefix: str = "data.subset") -> None:
    """Check the subset fields: the kind, and that exactly the size field the kind needs is set."""
    kinds = ("all", "random", "balanced", "classes")
    _require(subset.kind in kinds, f"{prefix}.kind", subset.kind, f"use one of {kinds}")
    _require(isinstance(subset.count, int) and subset.count >= 0, f"{prefix}.count", subset.count,
             "must be an integer >= 0")
    _require(0.0 <= subset.fraction <= 1.0, f"{prefix}.fraction", subset.fraction, "must lie in [0, 1]")
    _require(isinstance(subset.num_classes, int) and subset.num_classes >= 0, f"{prefix}.num_classes",
             subset.num_classes, "must be an integer >= 0")
    _require(isinstance(subset.seed, int), f"{prefix}.seed", subset.seed, "must be an integer")
    if subset.kind == "random":
        _require((subset.count > 0) != (subset.fraction > 0), f"{prefix}.count", subset.count,
                 f"kind=random needs exactly one of {prefix}.count > 0 or {prefix}.fraction > 0 "
                 f"(fraction={subset.fraction})")
    if subset.kind == "balanced":
        _require(subset.fraction > 0, f"{prefix}.fraction", subset.fraction,
                 "kind=balanced needs the share of every class, e.g. 0.1")
    if subset.kind == "classes":
        _require(subset.num_classes > 0, f"{prefix}.num_classes", subset.num_classes,
                 "kind=classes needs the number of classes, e.g. 100")


def validate_probe(probe: ml_collections.ConfigDict, prefix: str) -> None:
    """Check linear-probe fields; `prefix` is where they live in the config (for messages)."""
    _require(probe.pool in POOLS, f"{prefix}.pool", probe.pool, f"use one of {POOLS}")
    for name in ("epochs", "batch_size", "feature_batch_size"):
        _require(isinstance(probe[name], int) and probe[name] > 0, f"{prefix}.{name}", probe[name],
                 "must be a positive integer")
    _require(probe.max_train_examples >= 0, f"{prefix}.max_train_examples", probe.max_train_examples,
             "use 0 (all) or a positive count")


def validate_teacher(teacher: ml_collections.ConfigDict, check_weights: bool = True) -> None:
    """Check the teacher fields; `check_weights=False` (memory plans) allows no weights (B/16 shapes)."""
    _require(teacher.type in TEACHER_TYPES, "teacher.type", teacher.type, f"use one of {TEACHER_TYPES}")
    _require(teacher.feature in TEACHER_FEATURES, "teacher.feature", teacher.feature,
             f"use one of {TEACHER_FEATURES}")
    _require(teacher.dtype in DTYPES, "teacher.dtype", teacher.dtype, f"use one of {DTYPES}")
    _require(isinstance(teacher.heads, int) and teacher.heads >= 0, "teacher.heads", teacher.heads,
             "use 0 (infer) or a positive integer")
    _require(not check_weights or bool(teacher.weights) or teacher.type != "mae_run", "teacher.weights",
             teacher.weights, "set --config.teacher.weights=WORKDIR of an earlier pretraining run")
    _require(not check_weights or bool(teacher.weights), "teacher.weights", teacher.weights,
             f"set --config.teacher.weights=PATH to the {teacher.type} checkpoint (.pt/.pth/.safetensors/HF dir)")
    _require(not teacher.weights or run_dirs.exists(run_dirs.resolve(teacher.weights)), "teacher.weights",
             teacher.weights, "no such file or directory; check the path")


def _check_whitening(e: ml_collections.ConfigDict, prefix: str) -> None:
    _check_positive(e, prefix, ("whiten_eps",), integer=False)  # `whiten` is a bool field: ConfigDict checks it


def _check_feature_eval(e: ml_collections.ConfigDict, prefix: str) -> None:
    _require(e.pool in POOLS, f"{prefix}.pool", e.pool, f"use one of {POOLS}")
    _require(isinstance(e.feature_batch_size, int) and e.feature_batch_size > 0, f"{prefix}.feature_batch_size",
             e.feature_batch_size, "must be a positive integer")
    _require(isinstance(e.max_train_examples, int) and e.max_train_examples >= 0, f"{prefix}.max_train_examples",
             e.max_train_examples, "use 0 (all) or a positive count")


def _check_positive(e: ml_collections.ConfigDict, prefix: str, names: tuple, integer: bool) -> None:
    for name in names:
        ok = isinstance(e[name], int) if integer else isinstance(e[name], (int, float))
        _require(ok and e[name] > 0, f"{prefix}.{name}", e[name], "must be a positive " +
                 ("integer" if integer else "number"))


def validate_eval(e: ml_collections.ConfigDict, prefix: str) -> None:
    """Check one evaluator's fields (by its `type`); `prefix` is where they live, e.g. evals.knn."""
    _require(e.get("type") in EVAL_TYPES, f"{prefix}.type", e.get("type"), f"use one of {EVAL_TYPES}")
    _require(isinstance(e.every_steps, int) and e.every_steps >= 0, f"{prefix}.every_steps", e.every_steps,
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
        _require(len(e.shots) > 0 and all(isinstance(n, int) and n > 0 for n in e.shots), f"{prefix}.shots",
                 tuple(e.shots), "use positive shot counts, e.g. (1, 5, 10, 25)")
        _require(len(e.seeds) > 0, f"{prefix}.seeds", tuple(e.seeds), "use at least one seed, e.g. (0, 1, 2)")
        _check_positive(e, prefix, ("l2_reg",), integer=False)
    elif e.type == "recon_loss":
        _check_positive(e, prefix, ("batch_size",), integer=True)
        _require(isinstance(e.max_examples, int) and e.max_examples >= 0, f"{prefix}.max_examples", e.max_examples,
                 "use 0 (all) or a positive count")
    else:
        validate_finetune(e, prefix)


def validate_finetune(e: ml_collections.ConfigDict, prefix: str) -> None:
    """Check fine-tuning fields."""
    _check_positive(e, prefix, ("epochs", "batch_size", "eval_batch_size"), integer=True)
    _check_positive(e, prefix, ("base_lr",), integer=False)
    _require(0 <= e.warmup_epochs <= e.epochs, f"{prefix}.warmup_epochs", e.warmup_epochs,
             f"must lie in [0, {prefix}.epochs={e.epochs}]")
    _require(0 < e.layer_decay <= 1, f"{prefix}.layer_decay", e.layer_decay, "must lie in (0, 1], e.g. 0.75")
    for name in ("drop_path", "label_smoothing", "random_erase_prob", "ema_decay", "mixup_switch_prob"):
        _require(0 <= e[name] < 1 or (name == "mixup_switch_prob" and e[name] == 1), f"{prefix}.{name}", e[name],
                 "must lie in [0, 1)")
    for name in ("mixup_alpha", "cutmix_alpha", "weight_decay", "min_lr"):
        _require(e[name] >= 0, f"{prefix}.{name}", e[name], "must be >= 0")
    lo, hi = e.crop_scale
    _require(0 < lo <= hi <= 1, f"{prefix}.crop_scale", tuple(e.crop_scale), "needs 0 < min <= max <= 1")
    _require(isinstance(e.num_workers, int) and e.num_workers >= 0, f"{prefix}.num_workers", e.num_workers,
             "must be >= 0")
    randaugment.parse_spec(e.auto_augment, f"{prefix}.auto_augment")


def validate_evals(evals: ml_collections.ConfigDict) -> None:
    """Check every entry of config.evals."""
    for name in evals:
        validate_eval(evals[name], f"evals.{name}")


def validate(config: ml_collections.ConfigDict, check_data_path: bool = True) -> None:
    """Validate a pretraining config; raises ConfigError naming the first bad field.

    `check_data_path=False` is for programs that only compile the step (e.g. the memory plan).
    """
    _require(config.objective in OBJECTIVES, "objective", config.objective, f"use one of {OBJECTIVES}")
    if config.objective == "mae_teacher":
        validate_teacher(config.teacher, check_data_path)
    _require(isinstance(config.seed, int), "seed", config.seed, "must be an integer")
    _positive_int(config, "total_steps")
    validate_model(config.model)
    validate_data(config.data, check_data_path)
    for field in ("ckpt.every_steps", "ckpt.max_to_keep", "log.every_steps"):
        _positive_int(config, field)
    _require(config.optim.base_lr > 0, "optim.base_lr", config.optim.base_lr, "must be > 0")
    _positive_int(config, "optim.grad_accum_steps")
    _require(0 <= config.mesh.max_replicated_fraction <= 1, "mesh.max_replicated_fraction",
             config.mesh.max_replicated_fraction, "must lie in [0, 1], e.g. 0.02")
    _require(config.optim.warmup_steps >= 0, "optim.warmup_steps", config.optim.warmup_steps, "must be >= 0")
    validate_evals(config.evals)
    if config.objective == "mae_teacher":
        for name, e in config.evals.items():
            _require(e.type != "recon_loss" or not (e.every_steps or e.at_end), f"evals.{name}.every_steps",
                     e.every_steps, "the validation reconstruction loss is the pixel MAE loss, which a teacher-target "
                     f"run does not train; set --config.evals.{name}.every_steps=0 (and at_end=false)")
    validate_fault_tolerance(config)


def validate_fault_tolerance(config: ml_collections.ConfigDict) -> None:
    """Check the non-finite policy and the resume / init paths."""
    _require(config.optim.nonfinite in NONFINITE_POLICIES, "optim.nonfinite", config.optim.nonfinite,
             f"use one of {NONFINITE_POLICIES}")
    _positive_int(config, "optim.max_consecutive_skips")
    _require(not config.ckpt.resume_from or run_dirs.is_dir(run_dirs.resolve(config.ckpt.resume_from)),
             "ckpt.resume_from", config.ckpt.resume_from,
             "is not a directory; pass a pretraining workdir or WORKDIR/checkpoints/<step>, or leave it empty")
    _require(not config.init_from or run_dirs.exists(run_dirs.resolve(config.init_from)), "init_from",
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
