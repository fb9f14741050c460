"""Memory plan before renting a pod: compile the real train step for a TPU topology, from a CPU machine.

    python -m mim_jax.plan --config=configs/pretrain.py:model=6.5B/14 --topology=v5p:8x8x4

libtpu's compile-only devices (the `tpu` extra) lower and compile the very train step pretraining runs
(same config, mesh, rules and shardings) and report per-device argument / temp / total memory against the
chip's HBM, FLOPs per step, and whether it fits (exit 0) or not (exit 1). Needs no TPU.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # compile-only TPU devices; never initialize a local TPU

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import flags  # noqa: E402

from mim_jax.cluster.tpu_slices import GENERATIONS, Slice  # noqa: E402
from mim_jax.config.cli import run_cli  # noqa: E402
from mim_jax.errors import ConfigError  # noqa: E402
from mim_jax.objectives import registry  # noqa: E402
from mim_jax.parallel.sharding import logical_rules, make_mesh  # noqa: E402
from mim_jax.train.program import build_program, train_flops_per_step  # noqa: E402

GIB = 2 ** 30
# HBM per chip (GiB) and the number of topology dimensions per TPU generation.
TPU_CHIPS = {name: (g.hbm_gib, g.topology_dims) for name, g in GENERATIONS.items()}
TOPOLOGY_RE = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+)*)$")


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice by generation and chip grid, e.g. v5p:8x8x4 (256 chips)."""
    generation: str
    dims: tuple[int, ...]

    @property
    def name(self) -> str:
        """'v5p:8x8x4'."""
        return f"{self.generation}:{'x'.join(map(str, self.dims))}"

    @property
    def chips(self) -> int:
        """Number of chips in the slice."""
        return math.prod(self.dims)

    @property
    def hbm_per_chip(self) -> int:
        """HBM bytes of one chip."""
        return TPU_CHIPS[self.generation][0] * GIB


def parse_topology(text: str) -> Topology:
    """'v5p:8x8x4' -> Topology; a ConfigError lists the valid forms otherwise."""
    example = "v5e:2x2, v4:2x2x1, v5p:8x8x4, v6e:16x16"
    match = TOPOLOGY_RE.match(text or "")
    if not match:
        raise ConfigError(f"--topology={text!r} is not a TPU topology; use <generation>:<chip grid> with "
                          f"generation in {sorted(TPU_CHIPS)}, e.g. {example}")
    generation, dims = match.group(1), tuple(int(d) for d in match.group(2).split("x"))
    if len(dims) != TPU_CHIPS[generation][1] or min(dims) < 1:
        raise ConfigError(f"--topology={text!r}: {generation} slices have {TPU_CHIPS[generation][1]} positive "
                          f"dimensions, e.g. {example}")
    return Topology(generation, dims)


def quiet_libtpu(topology: Topology) -> None:
    """Describe a single compile-only host to libtpu, which otherwise logs errors looking for a TPU VM."""
    accelerator_type = Slice(GENERATIONS[topology.generation], topology.chips).accelerator_type
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no chip to lock; plans may run side by side


def topology_devices(topology: Topology) -> list:
    """Compile-only TPU devices of `topology` (libtpu via the `tpu` extra)."""
    quiet_libtpu(topology)
    try:
        from jax.experimental import topologies
        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology.name).devices)
    except Exception as err:  # libtpu missing, or a grid libtpu does not know
        raise ConfigError(f"--topology={topology.name}: libtpu could not describe it ({str(err).splitlines()[0]}); "
                          f"install the TPU compiler with pip install -e '.[tpu]' and use a valid slice shape, "
                          f"e.g. v5p:8x8x4") from None


OOM_RE = re.compile(r"RESOURCE_EXHAUSTED: .*?memory required for HLO temporaries \(([\d.]+)([KMGT])\)")


def out_of_memory_bytes(message: str) -> int | None:
    """Temporaries the TPU compiler asked for when it refused to compile for lack of HBM (None otherwise)."""
    match = OOM_RE.search(message)
    if not match:
        return None
    return int(float(match.group(1)) * 1024 ** "KMGT".index(match.group(2)) * 1024)


@dataclasses.dataclass(frozen=True)
class OutOfMemory:
    """Memory figures of a step the compiler refused: only its temporaries are known."""
    temp_size_in_bytes: int
    argument_size_in_bytes: int = 0
    output_size_in_bytes: int = 0
    alias_size_in_bytes: int = 0
    generated_code_size_in_bytes: int = 0


@dataclasses.dataclass
class PlanReport:
    """Per-device memory (bytes), FLOPs per step and the verdict of one plan."""
    topology: str
    devices: int
    mesh: dict
    global_batch_size: int
    grad_accum_steps: int
    params: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    hbm_per_device: int
    max_hbm_fraction: float
    model_flops_per_step: float
    xla_flops_per_step: float
    xla_flops_per_device: float
    compile_seconds: float

    @property
    def total_bytes(self) -> int:
        """Peak bytes per device: arguments + outputs not aliased to them (donation) + temporaries + code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def hbm_fraction(self) -> float:
        """Share of per-device HBM the step needs."""
        return self.total_bytes / self.hbm_per_device

    @property
    def fits(self) -> bool:
        """True when the step needs at most `max_hbm_fraction` of HBM."""
        return self.hbm_fraction <= self.max_hbm_fraction

    def as_dict(self) -> dict:
        """Fields plus the derived total, fraction and verdict (for --json)."""
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes, "hbm_fraction": self.hbm_fraction,
                "fits": self.fits}


def xla_train_flops(config, mesh) -> float:
    """XLA's count of the step's loss + gradient FLOPs (global batch), from a loop-free lowering.

    The planned program scans its layer stacks, and XLA's cost analysis counts a loop body once; so this
    lowers the same objective's loss with the stacks unrolled and no remat (model FLOPs), without compiling it.
    """
    cfg = config.copy_and_resolve_references()
    cfg.model.remat = "none"
    objective = registry.get(cfg.objective)
    model = objective.build_model(cfg, unroll=True)
    frozen = objective.frozen(cfg, mesh, logical_rules(cfg.mesh), unroll=True) if objective.frozen else None
    inputs = objective.init_inputs(model, cfg)
    params = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs)["params"]))
    batch = cfg.data.global_batch_size
    size = cfg.model.image_size
    images = {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
              "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    sampled = jax.eval_shape(lambda k: objective.sample(model, cfg, k, batch), key)
    loss_fn = objective.make_loss(model, cfg, frozen)
    # Shapes only: a frozen input sharded over the TPU topology would send this CPU-side lowering to the TPU
    # backend, whose lowered programs have no cost analysis.
    frozen_args = () if frozen is None else (jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                                          nn.unbox(frozen.abstract_params)),)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    lowered = jax.jit(grad_fn).lower(params, {**images, **sampled}, key, *frozen_args)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def plan(config, topology: Topology, max_hbm_fraction: float = 0.9) -> PlanReport:
    """Lower and compile the train step of `config` for `topology`; memory and FLOPs per device."""
    registry.validate(config, check_data_path=False)
    devices = topology_devices(topology)
    mesh = make_mesh(config.mesh, devices)
    hosts = len({d.process_index for d in devices})
    program = build_program(config, mesh, process_count=hosts)
    batch = config.data.global_batch_size
    start = time.perf_counter()
    lowered = program.lower(batch, config.model.image_size)
    try:
        compiled = lowered.compile()
    except Exception as err:  # the TPU compiler refuses programs that cannot fit in HBM
        needed = out_of_memory_bytes(str(err))
        if needed is None:
            raise
        memory, cost = OutOfMemory(needed), {}
    else:
        memory = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    seconds = time.perf_counter() - start
    return PlanReport(
        topology=topology.name, devices=len(devices), mesh=dict(mesh.shape), global_batch_size=batch,
        grad_accum_steps=config.optim.grad_accum_steps,
        params=sum(math.prod(x.shape) for x in jax.tree.leaves(program.abstract_state.params)),
        argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes,
        hbm_per_device=topology.hbm_per_chip * topology.chips // len(devices), max_hbm_fraction=max_hbm_fraction,
        model_flops_per_step=train_flops_per_step(config),
        xla_flops_per_step=xla_train_flops(config, mesh),
        xla_flops_per_device=float(cost.get("flops", 0.0)), compile_seconds=round(seconds, 1))


def format_report(r: PlanReport) -> str:
    """Human-readable plan summary."""
    gib = lambda b: f"{b / GIB:.2f} GiB" if b >= GIB / 10 else f"{b / 2 ** 20:.1f} MiB"
    lines = [
        f"topology {r.topology}: {r.devices} devices, mesh {r.mesh}, global batch {r.global_batch_size} "
        f"({r.grad_accum_steps} micro-batch(es)), {r.params / 1e6:,.1f}M params, compiled in {r.compile_seconds}s",
        f"  per device: arguments {gib(r.argument_bytes)} | outputs {gib(r.output_bytes)} "
        f"(aliased {gib(r.alias_bytes)}) | temp {gib(r.temp_bytes)} | code {gib(r.code_bytes)}",
        f"  total {gib(r.total_bytes)} of {gib(r.hbm_per_device)} HBM = {r.hbm_fraction:.1%} "
        f"(limit {r.max_hbm_fraction:.0%})",
        f"  FLOPs per step: ours {r.model_flops_per_step:.3e} (MaxText convention; "
        f"{r.model_flops_per_step / r.devices:.3e} per device), XLA {r.xla_flops_per_step:.3e} "
        f"(unrolled loss + grad, elementwise ops included; ours/XLA = "
        f"{r.model_flops_per_step / max(r.xla_flops_per_step, 1):.3f})",
        f"  {'FITS' if r.fits else 'DOES NOT FIT'}" + ("" if r.argument_bytes else
                                                      " (the TPU compiler ran out of HBM; temp is its request)"),
    ]
    return "\n".join(lines)


def _define_flags() -> None:
    flags.DEFINE_string("topology", None, "TPU slice, e.g. v5p:8x8x4 (default: config.plan.topology)")
    flags.DEFINE_float("max_hbm_fraction", 0.9, "Fits when the step needs at most this share of HBM")
    flags.DEFINE_string("json", None, "Also write the report as JSON to this path")


def plan_cli(config) -> int:
    """CLI action: print the plan; exit code 0 when it fits, 1 when not."""
    topology = parse_topology(flags.FLAGS.topology or config.plan.topology)
    report = plan(config, topology, flags.FLAGS.max_hbm_fraction)
    print(format_report(report), flush=True)
    if flags.FLAGS.json:
        with open(flags.FLAGS.json, "w") as f:
            json.dump(report.as_dict(), f, indent=2)
    return 0 if report.fits else 1


def run() -> None:
    """Console-script entry point (mim-plan)."""
    _define_flags()
    run_cli(plan_cli, "configs/pretrain.py:model=L/16", None)


if __name__ == "__main__":
    sys.exit(run())
