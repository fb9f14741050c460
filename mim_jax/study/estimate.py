"""Job plan figures of a cell: its slice, chips and chip-hours from our FLOPs at an assumed MFU.

chip-hours = model FLOPs of the run (train_flops_per_step x steps trained, MaxText convention) / (the chip's dense
bf16 peak x MFU) / 3600. TPU cells use the slice of `config.plan.topology`; SLURM cells the same number of H100s.
"""
from __future__ import annotations

import dataclasses

from mim_jax.cluster.tpu_slices import slice_for_topology
from mim_jax.parallel.chips import PEAK_BF16_TFLOPS
from mim_jax.train.program import train_flops_per_step

TPU_PEAK_KEYS = {"v4": "tpu v4", "v5e": "tpu v5 lite", "v5p": "tpu v5p", "v6e": "tpu v6 lite"}
GPU_KIND = "h100"
GPUS_PER_NODE = 8


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Chips, FLOPs and chip-hours of one cell on one launcher."""
    chips: int
    chip: str
    steps: int           # steps this cell trains (a branch: only those after its branch point)
    flops: float         # model FLOPs of those steps
    chip_hours: float
    mfu: float


def chip_count(config) -> int:
    """Chips of the cell's planned slice (config.plan.topology); 1 when it names none."""
    return slice_for_topology(config.plan.topology).chips if config.plan.topology else 1


def estimate(config, launcher: str, mfu: float, start_step: int = 0) -> Estimate:
    """Chip-hours of training `config` from `start_step` to its end on `launcher`'s chips at `mfu`."""
    chips = chip_count(config)
    if launcher == "slurm" or not config.plan.topology:
        kind = GPU_KIND
    else:
        kind = TPU_PEAK_KEYS[config.plan.topology.split(":")[0]]
    steps = config.total_steps - start_step
    flops = train_flops_per_step(config) * steps
    hours = flops / (PEAK_BF16_TFLOPS[kind] * 1e12 * mfu) / 3600
    return Estimate(chips, kind, steps, flops, hours, mfu)


def slurm_shape(chips: int) -> tuple[int, int]:
    """(nodes, GPUs per node) holding `chips` devices: full 8-GPU nodes, or one node with fewer."""
    if chips <= GPUS_PER_NODE:
        return 1, chips
    return -(-chips // GPUS_PER_NODE), GPUS_PER_NODE
