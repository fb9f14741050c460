"""Mini-study on the embedded 'shapes' dataset: 2 model sizes x 3 nested subsets x 2 lengths (12 cells).

    python -m mim_jax.study run --config=configs/studies/demo.py --root=workdirs/study_demo
    python -m mim_jax.study collect --root=workdirs/study_demo

MAE on 64-px shapes (the quickstart's data), batch 64, Xie et al.'s step schedule (lr x0.1 for the last 1/8),
so the 100-step cells branch from the 400-step cells at their decay point (step 88) and train only 12 steps.
Each cell ends with its validation loss (objective_loss on 1,000 val images, fixed masks) and a whitened kNN.
It asks whether Xie et al.'s overfitting signature shows up: the validation loss rising with training length on
the smallest subset (256 images: 100 epochs in 400 steps) while the larger subsets keep falling.

`configs/studies/demo.py:tiny` is the version the tests run (8 cells of 8 / 16 steps on 32-px images: seconds of
training each, the rest process start-up and compilation; 7m30s for all 8 on the loaded 2-core machine, so the
tests run 2 to 5 of its cells).
Axes can be narrowed: `configs/studies/demo.py:model=small,data=256|2k`.
"""
from mim_jax.study.grid import Axis, Study, Value

TRAIN_IMAGES = 20_000  # the embedded dataset's train split (data.synthetic.num_train)


def full_axes() -> tuple:
    """2 model sizes x 3 nested subsets x 2 lengths."""
    model = Axis("model", (
        Value("small", overrides={"model.width": 128, "model.depth": 2, "model.heads": 4, "model.mlp_dim": 512}),
        Value("base", overrides={"model.width": 192, "model.depth": 4, "model.heads": 3, "model.mlp_dim": 768}),
    ))
    data = Axis("data", (
        Value("256", overrides={"data.subset.kind": "random", "data.subset.count": 256}, x=256),
        Value("2k", overrides={"data.subset.kind": "random", "data.subset.count": 2048}, x=2048),
        Value("20k", overrides={"data.subset.kind": "all"}, x=TRAIN_IMAGES),
    ))
    length = Axis("length", (Value("100", overrides={"total_steps": 100}, x=100),
                             Value("400", overrides={"total_steps": 400}, x=400)))
    return model, data, length


def tiny_axes() -> tuple:
    """The test version: 2 tiny models x 2 subsets x 2 lengths on 36-px images."""
    model = Axis("model", (
        Value("w32", overrides={"model.width": 32, "model.depth": 1, "model.heads": 2, "model.mlp_dim": 64}),
        Value("w48", overrides={"model.width": 48, "model.depth": 1, "model.heads": 2, "model.mlp_dim": 96}),
    ))
    data = Axis("data", (Value("64", overrides={"data.subset.kind": "random", "data.subset.count": 64}, x=64),
                         Value("all", overrides={"data.subset.kind": "all"}, x=256)))
    length = Axis("length", (Value("8", overrides={"total_steps": 8}, x=8),
                             Value("16", overrides={"total_steps": 16}, x=16)))
    return model, data, length


COMMON = {
    "model.variant": "Ti/16", "model.patch_size": 16, "data.global_batch_size": 64,
    "optim.schedule": "step", "optim.step_decay_at": 0.875, "optim.step_decay_factor": 0.1,
    "optim.warmup_steps": 20, "ckpt.every_steps": 100, "log.every_steps": 10,
    "evals.val_loss.every_steps": 0, "evals.linear_probe.at_end": False,
    "evals.linear_probe.random_init_baseline": False, "evals.fewshot.at_end": False,
    "evals.fewshot.random_init_baseline": False, "evals.knn.random_init_baseline": False,
    "evals.knn.max_train_examples": 5000,
    "evals.objective_loss.at_end": True, "evals.objective_loss.batch_size": 250,
    "evals.objective_loss.max_examples": 1000,
}
TINY = {
    "model.patch_size": 8, "model.image_size": 32, "data.global_batch_size": 16,
    "data.synthetic.num_train": 256, "data.synthetic.num_val": 64, "data.synthetic.image_size": 36,
    "mae.decoder.width": 16, "mae.decoder.depth": 1, "mae.decoder.heads": 2, "mae.decoder.mlp_ratio": 2,
    "optim.warmup_steps": 2, "ckpt.every_steps": 5, "log.every_steps": 2,
    "evals.knn.max_train_examples": 128, "evals.knn.feature_batch_size": 32,
    "evals.objective_loss.batch_size": 32, "evals.objective_loss.max_examples": 64,
}


def get_study(arg: str = "") -> Study:
    """The mini-study (`tiny`: the test version); other arguments narrow the axes (axis=label|label)."""
    items = [a for a in (arg or "").split(",") if a]
    tiny = "tiny" in items
    rest = ",".join(a for a in items if a != "tiny")
    study = Study(name="demo_tiny" if tiny else "demo", config="configs/demo.py", axes=tiny_axes() if tiny else full_axes(),
                  overrides={**COMMON, **(TINY if tiny else {})}, assumed_mfu=0.4, metric="knn/top1",
                  description="MAE on shapes: model x nested subset x length")
    return study.select(rest)
