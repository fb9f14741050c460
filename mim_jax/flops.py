"""Model FLOPs per train step (MaxText convention) and MFU.

Convention (as in MaxText's `calculate_tflops_training_per_device`):
  * a matmul [m, k] x [k, n] costs 2*m*n*k FLOPs; elementwise ops, layer norms and softmax are not counted;
  * attention adds 4*S^2*d per layer per example (QK^T and AV, S tokens incl. CLS, d = width), whatever
    the number of heads;
  * training = 3x the forward (forward + backward: two matmuls per forward matmul), for every trainable
    matmul, including the patch embedding (whose input gradient is in fact never computed);
  * remat recompute is NOT counted (model FLOPs, not hardware FLOPs), so MFU does not rise with remat;
  * frozen parts (e.g. a teacher) count their forward only (x1): pass them as `teacher_forward_flops`.

What the MAE of `mim_jax.models.mae` runs, per example (N = (image/patch)^2 patches, K = num_visible(N, r)):
  encoder: patch embed on all N patches (masking happens after it), blocks on 1+K tokens;
  decoder: embed D_enc -> D_dec on 1+K tokens, blocks on 1+N tokens, prediction head D_dec -> p*p*3 on
  1+N tokens (the CLS row is predicted and then dropped).

Peaks are dense bf16 FLOP/s per chip. MFU is always taken against the bf16 peak, also for fp32 runs.
"""
from __future__ import annotations

from typing import Any, Optional

from mim_jax.models.mae import num_visible
from mim_jax.models.vit import resolve_dims

IMAGE_CHANNELS = 3

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


def matmul_flops(m: int, n: int, k: int) -> float:
    """2*m*n*k for an [m, k] x [k, n] matmul."""
    return 2.0 * m * n * k


def block_forward_flops(width: int, mlp_dim: int, tokens: int) -> float:
    """One transformer block on `tokens` tokens: q, k, v, out (4 D x D), MLP (D x M twice), attention 4 S^2 D."""
    projections = 4 * matmul_flops(tokens, width, width)
    mlp = 2 * matmul_flops(tokens, mlp_dim, width)
    attention = 4.0 * tokens * tokens * width
    return projections + mlp + attention


def encoder_forward_flops_per_example(width: int, depth: int, mlp_dim: int, tokens: int, patch_dim: int,
                                      num_patches: Optional[int] = None) -> float:
    """ViT encoder forward: patch embed (patch_dim -> width) on num_patches (default tokens-1) + depth blocks."""
    if num_patches is None:
        num_patches = tokens - 1
    return matmul_flops(num_patches, width, patch_dim) + depth * block_forward_flops(width, mlp_dim, tokens)


def _mae_dims(model_cfg, out_dim: int = 0) -> dict:
    dims = resolve_dims(model_cfg)
    grid = model_cfg.image_size // dims["patch_size"]
    num_patches = grid * grid
    dec = model_cfg.decoder
    return dict(dims, num_patches=num_patches, num_visible=num_visible(num_patches, model_cfg.mask_ratio),
                patch_dim=dims["patch_size"] ** 2 * IMAGE_CHANNELS, dec_width=dec.width, dec_depth=dec.depth,
                dec_mlp_dim=int(dec.mlp_ratio * dec.width),
                out_dim=out_dim or dims["patch_size"] ** 2 * IMAGE_CHANNELS)


def mae_forward_flops_breakdown(model_cfg, out_dim: int = 0) -> dict[str, float]:
    """Forward FLOPs per example of the MAE of `model_cfg` by part; `out_dim` = decoder outputs (0: pixels)."""
    d = _mae_dims(model_cfg, out_dim)
    enc_tokens, dec_tokens = 1 + d["num_visible"], 1 + d["num_patches"]
    return {
        "patch_embed": matmul_flops(d["num_patches"], d["width"], d["patch_dim"]),
        "encoder_blocks": d["depth"] * block_forward_flops(d["width"], d["mlp_dim"], enc_tokens),
        "decoder_embed": matmul_flops(enc_tokens, d["dec_width"], d["width"]),
        "decoder_blocks": d["dec_depth"] * block_forward_flops(d["dec_width"], d["dec_mlp_dim"], dec_tokens),
        "decoder_pred": matmul_flops(dec_tokens, d["out_dim"], d["dec_width"]),
    }


def mae_forward_flops_per_example(model_cfg, out_dim: int = 0) -> float:
    """Forward FLOPs per example of the MAE built by `mae_from_config(model_cfg, out_dim)`."""
    return sum(mae_forward_flops_breakdown(model_cfg, out_dim).values())


def vit_forward_flops_per_example(model_cfg) -> float:
    """Forward FLOPs per example of the unmasked encoder of `model_cfg` on all 1+N tokens (teacher / eval)."""
    d = _mae_dims(model_cfg)
    return encoder_forward_flops_per_example(d["width"], d["depth"], d["mlp_dim"], 1 + d["num_patches"],
                                             d["patch_dim"])


def teacher_forward_flops_per_example(arch, feature: str = "final") -> float:
    """Forward FLOPs per example of a `TeacherViT` of `arch` on its full grid (+ CLIP's projection for 'final')."""
    tokens = 1 + arch.grid_size ** 2
    forward = encoder_forward_flops_per_example(arch.width, arch.depth, arch.mlp_dim, tokens,
                                                arch.patch_size ** 2 * IMAGE_CHANNELS)
    return forward + (matmul_flops(tokens, arch.proj_dim, arch.width) if arch.proj_dim and feature == "final" else 0.0)


def mae_train_flops_per_example(model_cfg, teacher_forward_flops: float = 0.0, out_dim: int = 0) -> float:
    """Train FLOPs per example: 3x the MAE forward, plus a frozen teacher's forward (x1) when given."""
    return 3.0 * mae_forward_flops_per_example(model_cfg, out_dim) + teacher_forward_flops


def train_flops_per_step(model_cfg, global_batch_size: int, teacher_forward_flops: float = 0.0,
                         out_dim: int = 0) -> float:
    """Model FLOPs of one optimizer step over the global batch (all devices together)."""
    return global_batch_size * mae_train_flops_per_example(model_cfg, teacher_forward_flops, out_dim)
