"""Config defaults shared by every pretraining config; each objective adds its own block (objectives.registry)."""
from __future__ import annotations

import ml_collections

from mim_jax.objectives.registry import objective_blocks
from mim_jax.parallel.sharding import DEFAULT_RULES

IMAGENET_TRAIN_SIZE = 1_281_167


def base_config() -> ml_collections.ConfigDict:
    """All pretraining fields with their defaults (the demo and study configs start from this)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 100_000
    c.objective = "mae"               # a key of mim_jax.objectives.registry.OBJECTIVES; it reads its own block(s)

    c.model = ml_collections.ConfigDict()
    c.model.family = "vit"            # vit | swinv2 (mim_jax.models.backbones; SwinV2 with objective=simmim)
    c.model.variant = "B/16"          # key of vit.VIT_SIZES, or of swinv2.SWINV2_SIZES (swinv2_s .. swinv2_g)
    c.model.width = 0                 # 0 = from the size table; non-zero overrides it
    c.model.depth = 0
    c.model.heads = 0
    c.model.mlp_dim = 0
    c.model.patch_size = 0
    c.model.image_size = 224
    c.model.dtype = "bfloat16"        # compute dtype; params, optimizer and loss stay float32
    c.model.remat = "none"            # none | full | save_dots
    c.model.attention = "xla"         # xla | cudnn (NVIDIA GPUs) | auto (jax picks; XLA in jax 0.10)
    c.model.scan_unroll = 1           # layers per scan iteration; >= depth unrolls the stacks (longer compile)
    c.model.window_size = 0           # swinv2: attention window (0 = the size's, 12); stages no larger use their grid
    c.model.pretrained_window_sizes = ()  # swinv2: per-stage windows of pretraining (CPB scale), e.g. (12, 12, 12, 6)
    c.model.drop_path = 0.0           # stochastic depth of the encoder's last block in pretraining (SimMIM: 0.1)

    c.data = ml_collections.ConfigDict()
    c.data.source = "arrayrecord"     # arrayrecord (a directory written by mim_jax.data) | synthetic
    c.data.path = ""                  # source=arrayrecord: a mim_jax dataset dir or a TFDS array_record dir
    c.data.train_split = "train"
    c.data.val_split = "val"
    c.data.global_batch_size = 4096
    c.data.crop_scale = (0.2, 1.0)
    c.data.crop_ratio = (3 / 4, 4 / 3)
    c.data.num_workers = 0            # grain worker processes per host (0 = in the main process)
    c.data.max_labels = 0             # > 0: batches carry 'labels' int32 [B, max_labels], label sets padded with -1
    c.data.auto_augment = ""          # timm RandAugment spec on the host after crop + flip (e.g. rand-m9-n2); "" = off
    c.data.synthetic = ml_collections.ConfigDict(dict(num_train=20_000, num_val=2_500, image_size=72, seed=0,
                                                      multi_label=False))  # True: several shapes, tags per image
    c.data.subset = subset_config()

    c.optim = ml_collections.ConfigDict()
    c.optim.base_lr = 1.5e-4          # lr = base_lr * global_batch_size / 256
    c.optim.min_lr = 0.0
    c.optim.schedule = "cosine"       # cosine (to min_lr) | step (x step_decay_factor from step_decay_at on) | linear
    c.optim.step_decay_at = 0.875     # schedule=step: fraction of total_steps where the lr drops (Xie et al.: 7/8)
    c.optim.step_decay_factor = 0.1
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
    c.ckpt.keep_steps = ()            # steps also saved and kept beyond max_to_keep (a study's branch points)
    c.ckpt.resume_from = ""           # another run's dir or DIR/checkpoints/<step>: full state, if WORKDIR has none
    c.init_from = ""                  # a run's dir or DIR/checkpoints/<step>: weights only, if nothing to resume
    c.init_from_subtree = "encoder"   # which params init_from loads ("" = all, "encoder", "decoder", ...)
    c.log = ml_collections.ConfigDict(dict(every_steps=50))

    c.plan = ml_collections.ConfigDict(dict(topology=""))  # TPU slice the config targets, e.g. v5p:8x8x4

    c.evals = default_evals()
    # Where the evaluators read their (single-label) train and val splits: the pretraining data by default; e.g.
    # a WSP run on multi-label data evaluates on a single-label set (fields as in config.data).
    c.eval_data = c.data.copy_and_resolve_references()
    c.eval_data.source = "same_as_pretraining"
    for name, block in objective_blocks().items():  # config.mae, config.teacher, config.simmim, ...
        c[name] = block
    return c


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


def eval_schedule(eval_type: str) -> ml_collections.ConfigDict:
    """Fields every evaluator has: its type and when pretraining runs it (all off by default)."""
    e = ml_collections.ConfigDict()
    e.type = eval_type                # one of config.validation.EVAL_TYPES
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


def objective_loss_config() -> ml_collections.ConfigDict:
    """The run's own objective loss on the val split, its samples (masks) fixed by `sample_seed` (any objective)."""
    e = eval_schedule("objective_loss")
    e.batch_size = 256
    e.max_examples = 0                # 0 = the whole val split (full batches only)
    e.sample_seed = 0
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
    e.image_size = 0                  # swinv2: fine-tune at this size (0 = pretraining's), e.g. 224 from 192
    e.window_size = 0                 # swinv2: and window (0 = pretraining's), e.g. 14 from 12
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
    evals.objective_loss = objective_loss_config()
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


