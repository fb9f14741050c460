"""Dense bf16 peak FLOP/s per accelerator chip and model FLOPs utilization (MFU).

MFU is always taken against the bf16 peak, also for fp32 runs.
"""
from __future__ import annotations

from typing import Any, Optional

# Dense (no sparsity) bf16 TFLOP/s per chip, keyed by `normalize_device_kind`.
PEAK_BF16_TFLOPS: dict[str, float] = {
    "h100": 989.0,        # H100 SXM
    "h100 pcie": 756.0,   # H100 PCIe: lower clocks and SM count (1513 with sparsity)
    "h200": 989.0,
    "tpu v4": 275.0,
    "tpu v5 lite": 197.0,  # v5e
    "tpu v5p": 459.0,
    "tpu v6 lite": 918.0,  # v6e (Trillium)
}

# TensorCores per chip. A jax device covers `device.num_cores` of them: one device per chip with
# megacore (the v4 and v5p default), two per chip when megacore is off (e.g. v4 AOT topologies from
# `topologies.get_topology_desc`, which report num_cores=1 and core_on_chip 0/1).
TENSORCORES_PER_CHIP: dict[str, int] = {"tpu v4": 2, "tpu v5p": 2}


def normalize_device_kind(kind: str) -> Optional[str]:
    """Key of PEAK_BF16_TFLOPS for a jax `device_kind` string ('NVIDIA H100 80GB HBM3', 'TPU v5 lite'), or None."""
    k = " ".join(kind.lower().split())
    if "h100" in k:
        return "h100 pcie" if "pcie" in k else "h100"
    if "h200" in k:
        return "h200"
    if k in ("tpu v5 lite", "tpu v5e", "tpu v5litepod"):
        return "tpu v5 lite"
    if k in ("tpu v5", "tpu v5p"):
        return "tpu v5p"
    if k in ("tpu v6 lite", "tpu v6e"):
        return "tpu v6 lite"
    if k == "tpu v4":
        return "tpu v4"
    return None


def peak_flops_per_device(device: Any) -> Optional[float]:
    """Dense bf16 peak FLOP/s of one jax device (a chip, or its share of one); None for CPU / unknown kinds.

    A TPU device that holds fewer TensorCores than its chip (megacore off: v4 with num_cores=1 shows
    2 devices per chip) gets the chip peak times num_cores / TensorCores per chip, so that summing over
    devices gives the chip peak.
    """
    if getattr(device, "platform", None) == "cpu":
        return None
    key = normalize_device_kind(getattr(device, "device_kind", ""))
    if key is None:
        return None
    peak = PEAK_BF16_TFLOPS[key] * 1e12
    chip_cores = TENSORCORES_PER_CHIP.get(key, 1)
    device_cores = getattr(device, "num_cores", None) or chip_cores
    return peak * min(device_cores, chip_cores) / chip_cores


def mfu(flops_per_step: float, steps_per_sec: float, num_devices: int, peak_per_device: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over the summed peak of `num_devices` devices."""
    return flops_per_step * steps_per_sec / (num_devices * peak_per_device)
