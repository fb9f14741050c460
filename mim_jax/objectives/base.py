"""The objective interface: everything the train step, plan, resume and the evaluators need from an objective.

An objective is one module under `mim_jax/objectives/` exposing an `Objective` and one line in `registry.py`.
The generic pieces (`mim_jax.train`) only ever call these fields:

* `build_model(config, unroll)` -> the flax module (backbone + objective head); its params hold the backbone
  under 'encoder' (what evaluators and `init_from` read). `unroll` unrolls layer scans (XLA's FLOP count).
* `init_inputs(model, config)` -> positional inputs (batch 1) for `model.init`.
* `sample(model, config, key, batch_size)` -> per-example randomness of one step, arrays [B, ...] (MAE's masking
  noise, SimMIM's masks), drawn from `key = fold_in(key(seed), step)` over the GLOBAL batch: it never depends on
  the mesh, and micro-batches split it with the images.
* `make_loss(model, config, frozen)` -> `loss(params, batch, rng, frozen_params) -> (loss, metrics)`; `batch`
  holds the uint8 'image', 'label' and the sampled arrays; `rng` (folded per micro-batch) drives drop path.
* `frozen(config, mesh, rules, unroll)` -> a `Frozen` (a teacher) or None.
* `flops_per_example(config)` -> model FLOPs of one training example (MaxText convention, frozen parts x1).
* `validate(config, check_paths)` -> None, or a ConfigError naming the field of its own block.
* `evaluators`: the eval types that mean something for it (e.g. recon_loss only for pixel MAE).
* `signature(config)` -> the fields that fix parameter shapes beside config.model (resume checks them).
* `config_blocks`: {block name: default ConfigDict factory}; the blocks it reads (`config.mae`, ...).
* `adapt_init(source, config, init_from)` -> (source, notes): optional; adapts `init_from` weights to this model
  before they are merged (e.g. WSP fills a learned position table from a sin-cos source), or refuses them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn

# Evaluators on the frozen encoder, which every objective with an 'encoder' supports.
ENCODER_EVALUATORS = frozenset({"linear_probe", "knn", "fewshot", "finetune"})
# Evaluators that apply to every objective whatever its `evaluators` (they use only the objective's own fields).
GENERIC_EVALUATORS = frozenset({"objective_loss"})



@dataclasses.dataclass
class Frozen:
    """Frozen inputs of the step (a teacher): module, abstract params with shardings, and how to load them.

    The params are not in the TrainState: they enter the jitted step as a separate, non-donated argument.
    `loader(frozen, config, mesh, rules, read_run)` returns them as global arrays; `read_run(path, mesh, rules)`
    is the train layer's reader of an earlier run's params (for a teacher that is an earlier run).
    """
    module: nn.Module
    abstract_params: Any
    shardings: Any
    loader: Callable[..., Any]
    info: dict = dataclasses.field(default_factory=dict)  # objective-specific facts (e.g. the teacher's arch)

    def load(self, config, mesh, rules, read_run: Callable) -> Any:
        """The frozen params as global arrays in `self.shardings` (loaded once per run)."""
        return self.loader(self, config, mesh, rules, read_run)


@dataclasses.dataclass(frozen=True)
class Objective:
    """One pretraining objective (see the module docstring for each field's contract)."""
    name: str
    build_model: Callable[..., nn.Module]
    init_inputs: Callable[[nn.Module, Any], tuple]
    sample: Callable[..., dict]
    make_loss: Callable[..., Callable]
    flops_per_example: Callable[[Any], float]
    validate: Callable[[Any, bool], None]
    config_blocks: dict
    evaluators: frozenset = ENCODER_EVALUATORS
    signature: Callable[[Any], dict] = lambda config: {}
    frozen: Optional[Callable[..., Optional[Frozen]]] = None
    adapt_init: Optional[Callable[..., tuple]] = None
    description: str = ""


def supports(objective: Objective, eval_type: str) -> bool:
    """Whether `eval_type` means something for `objective` (its own evaluators, or a generic one)."""
    return eval_type in objective.evaluators or eval_type in GENERIC_EVALUATORS
