"""Model FLOPs of ViT parts (MaxText convention); each objective sums the parts its model runs.

Convention (as in MaxText's `calculate_tflops_training_per_device`):
  * a matmul [m, k] x [k, n] costs 2*m*n*k FLOPs; elementwise ops, layer norms and softmax are not counted;
  * attention adds 4*S^2*d per layer per example (QK^T and AV, S tokens incl. CLS, d = width), whatever
    the number of heads;
  * training = 3x the forward (forward + backward: two matmuls per forward matmul), for every trainable
    matmul, including the patch embedding (whose input gradient is in fact never computed);
  * remat recompute is NOT counted (model FLOPs, not hardware FLOPs), so MFU does not rise with remat;
  * frozen parts (e.g. a teacher) count their forward only (x1).
"""
from __future__ import annotations

from typing import Optional

from mim_jax.models.vit import resolve_dims

IMAGE_CHANNELS = 3


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


def vit_forward_flops_per_example(model_cfg) -> float:
    """Forward FLOPs per example of the unmasked encoder of `model_cfg` on all 1+N tokens (teacher / eval)."""
    d = resolve_dims(model_cfg)
    n = (model_cfg.image_size // d["patch_size"]) ** 2
    return encoder_forward_flops_per_example(d["width"], d["depth"], d["mlp_dim"], 1 + n,
                                             d["patch_size"] ** 2 * IMAGE_CHANNELS)


def teacher_forward_flops_per_example(arch, feature: str = "final") -> float:
    """Forward FLOPs per example of a `TeacherViT` of `arch` on its full grid (+ CLIP's projection for 'final')."""
    tokens = 1 + arch.grid_size ** 2
    forward = encoder_forward_flops_per_example(arch.width, arch.depth, arch.mlp_dim, tokens,
                                                arch.patch_size ** 2 * IMAGE_CHANNELS)
    return forward + (matmul_flops(tokens, arch.proj_dim, arch.width) if arch.proj_dim and feature == "final" else 0.0)
