"""FLOPs counter and MFU against references: XLA's compiled program, a hand derivation, published ViT-B/16 figures."""
import math
import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from mim_jax.models import flops
from mim_jax.objectives import mae
from mim_jax.parallel import chips
from mim_jax.train.program import train_flops_per_step


def model_config(variant="B/16", width=0, depth=0, heads=0, mlp_dim=0, patch_size=0, image_size=224,
                 mask_ratio=0.75, decoder=(512, 8, 16, 4)):
    """The config fields build_mae reads (model, mae), written out so the reference numbers stay fixed."""
    dw, dd, dh, dr = decoder
    return ml_collections.ConfigDict(dict(
        objective="mae", data=dict(global_batch_size=1),
        model=dict(variant=variant, width=width, depth=depth, heads=heads, mlp_dim=mlp_dim, patch_size=patch_size,
                   image_size=image_size, dtype="float32", remat="none", drop_path=0.0),
        mae=dict(mask_ratio=mask_ratio, norm_pix_loss=True, decoder=dict(width=dw, depth=dd, heads=dh, mlp_ratio=dr))))


# Small but matmul-dominated: wide enough that XLA's elementwise FLOPs (GELU's erf polynomial, layer norms,
# softmax, the loss) stay a few % of the total. Encoder on 1 + int(16 * 0.25) = 5 tokens, decoder on 17.
SMALL = dict(variant="Ti/16", width=256, depth=2, heads=4, mlp_dim=1024, patch_size=8, image_size=32,
             decoder=(128, 1, 2, 4))
BATCH = 2

_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\w+\[([\d,]*)\]")


def hlo_dot_flops(hlo_text: str) -> float:
    """2 * out elements * contracted size, summed over every `dot` of a loop-free compiled HLO module."""
    shapes = {}
    for line in hlo_text.splitlines():
        m = _DEF.match(line)
        if m:
            shapes[m.group(1)] = [int(x) for x in m.group(2).split(",") if x]
    total = 0
    for line in hlo_text.splitlines():
        if " dot(" not in line:
            continue
        out = _DEF.match(line).group(1)
        lhs = re.search(r" dot\(%?([\w.\-]+)", line).group(1)
        dims = [int(x) for x in re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1).split(",") if x]
        total += 2 * math.prod(shapes[out]) * math.prod(shapes[lhs][d] for d in dims)
    return float(total)


@pytest.fixture(scope="module")
def compiled_small():
    """The real MAE loss (forward) and loss+grad (train), both layer stacks fully unrolled, compiled on CPU."""
    cfg = model_config(**SMALL)
    model = mae.build_mae(cfg, unroll=True)
    batch = {"image": jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.uint8),
             "noise": jax.ShapeDtypeStruct((BATCH, 16), jnp.float32)}
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), *mae.init_inputs(model, cfg)))
    params = jax.tree.map(lambda b: b.value, params["params"], is_leaf=lambda b: hasattr(b, "value"))
    loss = lambda p, b: mae.make_loss(model, cfg)(p, b, None)[0]
    return cfg, {"forward": jax.jit(loss).lower(params, batch).compile(),
                 "train": jax.jit(jax.value_and_grad(loss)).lower(params, batch).compile()}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["forward", "train"])
def test_counter_agrees_with_xla_cost_analysis(compiled_small, kind):
    """Our count vs XLA:CPU on the real jitted MAE loss (forward) and value_and_grad (train).

    Method: XLA's cost analysis counts a while-loop body once, and BlockStack stacks blocks with nn.scan, so
    both stacks are built with scan_unroll = depth; the compiled module then has no loop (asserted) and every
    op is counted once. Two checks:
      * exact: the matmul FLOPs of the compiled program (each `dot` parsed from the HLO) equal our forward
        count, and for training 3x it minus the patch embedding's forward, because the gradient w.r.t. the
        images is never computed (the convention still charges it: it is 0.1-1% of a real model);
      * total: XLA's cost_analysis()['flops'], which also counts elementwise ops, lies within 10%.
    """
    cfg, compiled = compiled_small
    hlo = compiled[kind].as_text()
    assert " while(" not in hlo and "convolution(" not in hlo and "custom-call(" not in hlo
    forward = sum(mae.forward_flops_breakdown(cfg).values())
    ours = forward if kind == "forward" else mae.flops_per_example(cfg)
    patch_embed = mae.forward_flops_breakdown(cfg)["patch_embed"]
    exact = forward if kind == "forward" else ours - patch_embed
    assert hlo_dot_flops(hlo) / BATCH == exact
    xla = compiled[kind].cost_analysis()["flops"] / BATCH
    print(f"{kind}: ours {ours:.4g}, XLA {xla:.4g} (ratio {xla / ours:.4f}), XLA matmuls {exact:.4g}")
    assert 0.9 < xla / ours < 1.1


def b16_mae_by_hand():
    """MAE ViT-B/16 at 224, mask 0.75, decoder 512-d x 8 (MLP 2048): forward FLOPs = 2 * matmul weights * tokens
    + attention 4 * S^2 * d per layer, written out independently of mim_jax.flops."""
    patches, visible = 196, 49                    # (224/16)^2; int(196 * 0.25)
    enc_tokens, dec_tokens = 1 + visible, 1 + patches
    d, m, e, em = 768, 3072, 512, 2048
    pixels = 16 * 16 * 3
    enc_block_weights = 4 * d * d + 2 * d * m     # q, k, v, out + fc1, fc2 (7,077,888)
    dec_block_weights = 4 * e * e + 2 * e * em    # (3,145,728)
    return (2 * pixels * d * patches
            + 12 * (2 * enc_block_weights * enc_tokens + 4 * enc_tokens ** 2 * d)
            + 2 * d * e * enc_tokens
            + 8 * (2 * dec_block_weights * dec_tokens + 4 * dec_tokens ** 2 * e)
            + 2 * e * pixels * dec_tokens)


def test_b16_mae_closed_form():
    cfg = model_config()
    expected = b16_mae_by_hand()
    assert expected == 19_562_266_624
    assert sum(mae.forward_flops_breakdown(cfg).values()) == expected
    assert mae.flops_per_example(cfg) == 3 * expected
    cfg.data.global_batch_size = 4096
    assert train_flops_per_step(cfg) == 4096 * 3 * expected


def test_b16_encoder_forward_matches_published_figure():
    """ViT-B/16 at 224 on all 197 tokens is quoted as 17.6 'GFLOPs' (ViT/DeiT tables, fvcore). That tool
    counts one multiply-add as ONE op, so the figure is 17.6 G multiply-adds = ~35.2 GFLOPs in our 2*m*n*k
    convention (check: 2 * 86M params * 197 tokens = 34 GFLOPs before attention)."""
    cfg = model_config()
    gflops = flops.vit_forward_flops_per_example(cfg.model) / 1e9
    assert abs(gflops / 2 / 17.6 - 1) < 0.02, gflops
    d = flops.encoder_forward_flops_per_example(768, 12, 3072, tokens=197, patch_dim=768)
    assert d == flops.vit_forward_flops_per_example(cfg.model)


def test_mfu_by_hand():
    # 6e15 FLOPs per step at 0.5 steps/s on 8 chips of 989 TFLOP/s: 3e15 / 7.912e15.
    assert chips.mfu(6e15, 0.5, 8, 989e12) == pytest.approx(3e15 / 7.912e15, rel=1e-12)
    assert chips.mfu(6e15, 0.5, 8, 989e12) == pytest.approx(0.379171, abs=1e-6)


def _device(kind, platform="gpu", **attrs):
    return types.SimpleNamespace(device_kind=kind, platform=platform, **attrs)


@pytest.mark.parametrize("kind,platform,tflops", [
    ("NVIDIA H100 80GB HBM3", "gpu", 989), ("NVIDIA H200", "gpu", 989), ("NVIDIA H100 PCIe", "gpu", 756),
    ("TPU v4", "tpu", 275), ("TPU v5 lite", "tpu", 197), ("TPU v5", "tpu", 459), ("TPU v5p", "tpu", 459),
    ("TPU v6 lite", "tpu", 918), ("NVIDIA A100-SXM4-40GB", "gpu", None), ("TPU v99", "tpu", None),
])
def test_peak_lookup(kind, platform, tflops):
    peak = chips.peak_flops_per_device(_device(kind, platform))
    assert peak == (None if tflops is None else tflops * 1e12)


def test_peak_is_per_device_when_megacore_is_off():
    """v4 with megacore (the default) is one device per chip (num_cores=2); AOT topologies show two devices per
    chip (num_cores=1, see DEPS.md), each then holds half the chip peak so summed MFU stays right."""
    assert chips.peak_flops_per_device(_device("TPU v4", "tpu", num_cores=2)) == 275e12
    assert chips.peak_flops_per_device(_device("TPU v4", "tpu", num_cores=1)) == 137.5e12
    assert chips.peak_flops_per_device(_device("TPU v5", "tpu", num_cores=2)) == 459e12
    assert chips.peak_flops_per_device(_device("TPU v5 lite", "tpu", num_cores=1)) == 197e12


def test_no_peak_on_cpu():
    assert chips.peak_flops_per_device(jax.devices("cpu")[0]) is None
    assert chips.peak_flops_per_device(_device("cpu", "cpu")) is None


def test_teacher_forward_matches_compiled_matmuls():
    """A CLIP-style teacher (ln_pre, projection of every token) compiled loop-free: its `dot` FLOPs equal our count."""
    from mim_jax.models.teachers import TeacherViT, ViTArch
    arch = ViTArch(256, 2, 4, 1024, 8, 4, positions="learned", ln_pre=True, proj_dim=96, patch_bias=False)
    module = TeacherViT(arch, "final", jnp.float32, scan_unroll=arch.depth)
    images = jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.float32)
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]
    params = jax.tree.map(lambda b: b.value, params, is_leaf=lambda b: hasattr(b, "value"))
    hlo = jax.jit(module.apply).lower({"params": params}, images).compile().as_text()
    assert " while(" not in hlo
    assert hlo_dot_flops(hlo) / BATCH == flops.teacher_forward_flops_per_example(arch, "final")
    without_proj = flops.teacher_forward_flops_per_example(arch, "last_block")
    assert flops.teacher_forward_flops_per_example(arch) - without_proj == 2 * 17 * 96 * 256


def test_clip_teacher_step_by_hand():
    """B/16 student with a CLIP B/16 teacher at 224: 3x the MAE forward with a 512-d prediction head, plus the
    teacher's forward once (197 tokens, 12 blocks, projection of every token), from the built program."""
    from mim_jax.config.defaults import base_config
    from mim_jax.parallel.sharding import make_mesh
    from mim_jax.train.program import build_program
    c = base_config()
    c.objective = "mae_teacher"
    c.data.global_batch_size = 8
    program = build_program(c, make_mesh(ml_collections.ConfigDict(dict(shape=(1, 1, 1))), jax.devices()[:1]))
    s, d, m = 197, 768, 3072
    teacher = 2 * 196 * 768 * d + 12 * (2 * (4 * d * d + 2 * d * m) * s + 4 * s * s * d) + 2 * s * 512 * d
    student = b16_mae_by_hand() - 2 * 512 * 768 * s + 2 * 512 * 512 * s  # prediction head: 768 pixels -> 512
    assert program.model.decoder.out_dim == 512
    assert train_flops_per_step(c) == 8 * (3 * student + teacher)
