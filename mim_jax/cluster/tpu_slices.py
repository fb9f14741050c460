"""Cloud TPU slices by accelerator type (v5p-256, v5litepod-16, ...): chips, hosts, runtime version.

A slice named `<prefix>-<N>` counts TensorCores for v4 / v5p (two per chip, one JAX device per chip with
megacore) and chips for v5e / v6e. Multi-host slices have 4 chips per host; v5e / v6e slices of up to 8
chips run on one host. JAX sees one device per chip and one process per host.
"""
from __future__ import annotations

import dataclasses
import re

from mim_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Generation:
    """One TPU generation: accelerator-type prefix, cores per chip, HBM per chip, TPU VM runtime image."""
    name: str
    prefix: str
    cores_per_chip: int
    hbm_gib: int
    topology_dims: int
    runtime_version: str
    max_single_host_chips: int


GENERATIONS = {
    "v4": Generation("v4", "v4", 2, 32, 3, "tpu-ubuntu2204-base", 4),
    "v5e": Generation("v5e", "v5litepod", 1, 16, 2, "v2-alpha-tpuv5-lite", 8),
    "v5p": Generation("v5p", "v5p", 2, 95, 3, "v2-alpha-tpuv5", 4),
    "v6e": Generation("v6e", "v6e", 1, 32, 2, "v2-alpha-tpuv6e", 8),
}
CHIPS_PER_HOST = 4
ACCELERATOR_RE = re.compile(r"^(v4|v5litepod|v5p|v6e)-(\d+)$")
EXAMPLES = "v4-32, v5p-256, v5litepod-16, v6e-64"


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice: its generation and chip count."""
    generation: Generation
    chips: int

    @property
    def accelerator_type(self) -> str:
        """The name gcloud takes, e.g. 'v5p-256' for 128 v5p chips."""
        return f"{self.generation.prefix}-{self.chips * self.generation.cores_per_chip}"

    @property
    def hosts(self) -> int:
        """TPU VM workers (= JAX processes) of the slice."""
        if self.chips <= self.generation.max_single_host_chips:
            return 1
        return self.chips // CHIPS_PER_HOST

    @property
    def devices(self) -> int:
        """JAX devices of the slice (one per chip)."""
        return self.chips


def parse_accelerator_type(text: str) -> Slice:
    """'v5p-256' -> Slice(v5p, 128 chips); a ConfigError lists the valid forms otherwise."""
    match = ACCELERATOR_RE.match(text or "")
    if not match:
        raise ConfigError(f"--accelerator_type={text!r} is not a TPU accelerator type; use <generation>-<size> "
                          f"with generation in v4, v5litepod (v5e), v5p, v6e, e.g. {EXAMPLES}")
    generation = next(g for g in GENERATIONS.values() if g.prefix == match.group(1))
    size = int(match.group(2))
    if size < generation.cores_per_chip or size % generation.cores_per_chip:
        raise ConfigError(f"--accelerator_type={text!r}: {generation.prefix} sizes count TensorCores "
                          f"({generation.cores_per_chip} per chip); use a multiple of {generation.cores_per_chip}")
    chips = size // generation.cores_per_chip
    if chips > generation.max_single_host_chips and chips % CHIPS_PER_HOST:
        raise ConfigError(f"--accelerator_type={text!r}: a multi-host slice has a multiple of {CHIPS_PER_HOST} "
                          f"chips, not {chips}")
    return Slice(generation, chips)


def slice_for_topology(topology: str) -> Slice:
    """The slice of a plan topology such as 'v5p:4x4x8' (config.plan.topology)."""
    generation, _, grid = (topology or "").partition(":")
    if generation not in GENERATIONS or not re.fullmatch(r"\d+(x\d+)*", grid):
        raise ConfigError(f"plan.topology={topology!r} is not a TPU topology such as v5p:4x4x8; pass "
                          f"--accelerator_type (e.g. {EXAMPLES}) or set --config.plan.topology")
    chips = 1
    for dim in grid.split("x"):
        chips *= int(dim)
    return Slice(GENERATIONS[generation], chips)
