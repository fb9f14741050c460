"""Evaluate a pretrained encoder: python -m mim_jax.evaluate --config=configs/linear_probe.py
--config.init_from=PRETRAIN_WORKDIR[/checkpoints/STEP] --workdir=DIR  ->  DIR/evals/<name>.json
"""
from __future__ import annotations



import jax

from mim_jax import configuration, distributed
from mim_jax.cli_flags import run_cli
from mim_jax.configuration import ConfigError
from mim_jax.data.sources import resolve_dataset_dir
from mim_jax.evaluate.probe_run import probe_encoder, write_eval
from mim_jax.pretrained import load_run
from mim_jax.sharding import logical_rules, make_mesh



def evaluate(config, workdir: str) -> dict:
    """Run the configured evaluation and write WORKDIR/evals/<config.name>.json."""
    distributed.initialize()
    configuration.validate_probe(config.probe, "probe")
    workdir = configuration.check_workdir(workdir)
    if not config.init_from:
        raise ConfigError("init_from is empty; pass --config.init_from=PRETRAIN_WORKDIR")
    mesh = make_mesh(config.mesh)
    rules = logical_rules(config.mesh)
    run_cfg, model, params, step = load_run(config.init_from, mesh, rules, config.random_init)
    data_cfg = run_cfg.data if config.data.source == "same_as_pretraining" else config.data
    dataset_dir = resolve_dataset_dir(data_cfg)
    result = probe_encoder(model.encoder, params["encoder"], dataset_dir, data_cfg.train_split, data_cfg.val_split,
                           config.probe, mesh, rules, config.seed)
    result.update(step=step, init_from=config.init_from)
    path = write_eval(workdir, config.name, result)
    if jax.process_index() == 0:
        print(f"{config.name}: top1 {result['top1']:.4f} top5 {result['top5']:.4f} (step {step}) -> {path}", flush=True)
    return result


def run() -> None:
    """Console-script entry point (mim-eval)."""
    run_cli(evaluate, "configs/linear_probe.py", "Directory for evals/<name>.json.")


if __name__ == "__main__":
    run()
