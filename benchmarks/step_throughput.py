"""Train-step throughput of our jitted step against the HF transformers ViTMAE (PyTorch) peer, in one run.

    python benchmarks/step_throughput.py --model=B/16 --batch=8 --dtype=float32
    python benchmarks/step_throughput.py --model=B/16 --batch=8 --objective=mae_teacher --steps=5
    python benchmarks/step_throughput.py --model=B/16 --batch=8 --profile=/tmp/step_trace   # + top-op table

Ours: the config -> `build_program` path pretraining uses (any objective it knows), the state built by
`create_train_state`, synthetic uint8 images placed once with the batch sharding, the step compiled ahead of
time from the same jitted function (so XLA's memory analysis comes for free). `mae_teacher` uses a frozen
CLIP ViT-B/16 teacher whose params are random-initialised on device from its abstract shapes (nothing loads).

Peer: `ViTMAEForPreTraining` built from a `ViTMAEConfig` with the same encoder/decoder shapes, image size,
patch, mask ratio, norm_pix_loss and LayerNorm eps, random weights, `torch.optim.AdamW`; one step = uint8 ->
normalized input, forward, backward, optimizer step, on the same device, bf16 through autocast on GPU (fp32
on CPU, where --dtype=float32 is the like-for-like setting). For `mae_teacher` the peer adds a frozen
`CLIPVisionModelWithProjection` (B/16 shapes) forward under no_grad on the same images (its loss stays the
pixel loss: HF has no feature-target MAE). `--peer_compile=auto` also times `torch.compile` on GPU only
(on CPU the inductor compile takes minutes: opt in with --peer_compile=yes; failures are caught and reported).

Timing: every step is timed alone to `block_until_ready` / `cuda.synchronize`, ours and the peer taking
turns (the order flips every round), after --warmup steps each; figures are medians, with min and max,
and the process CPU-seconds per step (all threads: steadier than wall time on a shared CPU machine).
`--variant` adds more of our steps (a config override or a per-compile XLA option) to the same rotation.
On a CPU machine with libtpu installed, set JAX_PLATFORMS=cpu (else libtpu logs TPU-init errors).
MFU is against a peak measured in the same run: a square matmul at the same dtype, timed the same way.
The last line printed is one JSON object; --results=PATH appends a markdown block (--results='' disables).
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import resource
import signal
import statistics
import sys
import time
from typing import Any, Callable

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # GPU: leave room for the torch peer
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mim_jax.config.defaults import base_config  # noqa: E402
from mim_jax.config.validation import validate_model  # noqa: E402
from mim_jax.models.vit import VIT_SIZES, resolve_dims  # noqa: E402
from mim_jax.objectives.registry import OBJECTIVES  # noqa: E402

DEFAULT_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="B/16", choices=sorted(VIT_SIZES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--objective", default="mae", choices=sorted(OBJECTIVES),
                   help="our side: any registered objective; the HF peer exists for mae and mae_teacher")
    p.add_argument("--steps", type=int, default=10, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="config override, e.g. --set=model.width=32 --set=model.remat=full (repeatable)")
    p.add_argument("--variant", action="append", default=[], metavar="FIELD=VALUE|xla_FLAG=VALUE",
                   help="also time our step with this config override, or with this XLA option given to its compile "
                        "(e.g. --variant=model.scan_unroll=12, --variant=xla_cpu_experimental_ynn_fusion_type=), "
                        "interleaved with the others (repeatable)")
    p.add_argument("--peer", default="yes", choices=("yes", "no"), help="time the HF PyTorch peer")
    p.add_argument("--peer_compile", default="auto", choices=("auto", "yes", "no"),
                   help="also time torch.compile of the peer (auto: on GPU only)")
    p.add_argument("--peer_compile_timeout", type=int, default=900, help="seconds allowed for torch.compile")
    p.add_argument("--peak_size", type=int, default=0, help="matmul size for the peak (0: 2048 CPU, 8192 else)")
    p.add_argument("--profile", default="", help="write a jax.profiler trace of --profile_steps steps here")
    p.add_argument("--profile_steps", type=int, default=3)
    p.add_argument("--results", default=DEFAULT_RESULTS, help="append a markdown block here ('' = off)")
    return p.parse_args(argv)


def parse_value(text: str) -> Any:
    """A Python literal (int, float, tuple, bool) or else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(c, item: str, flag: str = "--set") -> None:
    """Set one FIELD=VALUE override on config `c`, with an error naming the flag."""
    field, _, value = item.partition("=")
    *parents, leaf = field.split(".")
    node = c
    try:
        for name in parents:
            node = node[name]
        node[leaf] = parse_value(value)
    except (KeyError, AttributeError, TypeError) as e:
        raise SystemExit(f"{flag}={item}: not a config field or wrong type ({e})") from None


def build_config(args: argparse.Namespace):
    """base_config() with the flags and --set overrides applied; the model fields validated."""
    c = base_config()
    c.objective = args.objective
    c.model.variant, c.model.dtype = args.model, args.dtype
    c.teacher.dtype = args.dtype
    c.data.source, c.data.global_batch_size = "synthetic", args.batch
    c.optim.warmup_steps, c.total_steps = 10, 1000
    for item in args.set:
        apply_override(c, item)
    validate_model(c.model)
    if args.peer == "yes" and c.objective not in ("mae", "mae_teacher"):
        raise SystemExit(f"--objective={c.objective}: the HF peer (ViTMAEForPreTraining) exists for mae and "
                         f"mae_teacher only; add --peer=no to time our step alone")
    return c


def block(tree: Any) -> Any:
    """Wait for every jax array in `tree`."""
    return jax.block_until_ready(tree)


def build_ours(config, compiler_options: dict | None = None) -> dict:
    """Our step for `config` as pretraining builds it -> {step (runs one, blocking), flops, memory, compile_s}.

    All our-side construction lives here (adapt it when the train-step API moves). `compiler_options`
    (XLA debug options, e.g. {'xla_cpu_experimental_ynn_fusion_type': ''}) go to this executable's compile.
    """
    from mim_jax.parallel.sharding import global_batch, make_mesh, sharding_context
    from mim_jax.train.program import build_program, train_flops_per_step
    mesh = make_mesh(config.mesh)
    program = build_program(config, mesh)
    state, _ = program.init_state(config.seed)
    size, batch_size = config.model.image_size, config.data.global_batch_size
    images = np.random.default_rng(0).integers(0, 256, (batch_size, size, size, 3), np.uint8)
    batch = block(global_batch({"image": images, "label": np.zeros((batch_size,), np.int32)}, mesh, program.rules))
    frozen = () if program.frozen is None else (random_frozen_params(program),)
    start = time.perf_counter()
    compiled = program.lower(batch_size, size).compile(compiler_options=compiler_options or None)
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def step() -> None:
        with sharding_context(mesh, program.rules):
            holder["state"], metrics = compiled(holder["state"], batch, *frozen)
        block((holder["state"], metrics))
    return {"step": step, "flops": train_flops_per_step(config), "compile_s": compile_s,
            "xla_memory_bytes": xla_memory_bytes(compiled), "hlo_text": compiled.as_text}


def random_frozen_params(program) -> Any:
    """The frozen teacher's params, random-initialised on device straight into their shardings and dtype."""
    import flax.linen as nn

    from mim_jax.parallel.sharding import sharding_context
    frozen = program.frozen
    size = frozen.info["image_size"]
    images = jnp.zeros((1, size, size, 3), jnp.float32)

    def init(rng):
        params = nn.unbox(frozen.module.init(rng, images)["params"])
        return jax.tree.map(lambda x, a: x.astype(a.dtype), params, frozen.abstract_params)
    with sharding_context(program.mesh, program.rules):
        return block(jax.jit(init, out_shardings=frozen.shardings)(jax.random.key(1)))


def xla_memory_bytes(compiled) -> int | None:
    """XLA's per-device footprint of the compiled step: arguments + outputs not aliased + temporaries."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def peer_hf_config(config):
    """The ViTMAEConfig with our encoder/decoder shapes, image size, patch, mask ratio, norm_pix_loss, LN eps."""
    from transformers import ViTMAEConfig
    d, dec = resolve_dims(config.model), config.mae.decoder
    return ViTMAEConfig(
        hidden_size=d["width"], num_hidden_layers=d["depth"], num_attention_heads=d["heads"],
        intermediate_size=d["mlp_dim"], patch_size=d["patch_size"], image_size=config.model.image_size,
        decoder_hidden_size=dec.width, decoder_num_hidden_layers=dec.depth, decoder_num_attention_heads=dec.heads,
        decoder_intermediate_size=dec.mlp_ratio * dec.width, mask_ratio=config.mae.mask_ratio,
        norm_pix_loss=config.mae.norm_pix_loss, layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True)


def peer_teacher(config, device: str):
    """Frozen HF CLIP vision tower (ViT-B/16 shapes, random weights) on the student's patch grid."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    grid = config.model.image_size // resolve_dims(config.model)["patch_size"]
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=grid * 16, patch_size=16, projection_dim=512, hidden_act="quick_gelu")
    return CLIPVisionModelWithProjection(cfg).to(device).eval().requires_grad_(False)


def build_peer(config, device: str, compile_model: bool) -> Callable[[], None]:
    """One full HF ViTMAE training step (uint8 -> normalize, forward, backward, AdamW), blocking."""
    import torch
    from transformers import ViTMAEForPreTraining
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(peer_hf_config(config)).to(device).train()
    teacher = peer_teacher(config, device) if config.objective == "mae_teacher" else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)
    size, b = config.model.image_size, config.data.global_batch_size
    images = torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, device=device)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in IMAGENET_MEAN_STD)
    forward = torch.compile(model) if compile_model else model
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                              enabled=config.model.dtype == "bfloat16")

    def step() -> None:
        x = (images.float() / 255.0 - mean) / std
        with autocast:
            loss = forward(pixel_values=x).loss
            if teacher is not None:
                with torch.no_grad():  # the frozen forward's cost (eager), resized as ours; features unused
                    t = teacher.config.image_size
                    teacher(pixel_values=x if t == size else torch.nn.functional.interpolate(
                        x, size=(t, t), mode="bicubic", align_corners=False))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    step.attention = model.config._attn_implementation
    return step


def setup_torch(jax_device) -> str:
    """Torch device matching jax's, threads = the cores jax uses; fp32 matmuls as XLA's default on GPU (TF32)."""
    import torch
    if jax_device.platform == "gpu":
        torch.set_float32_matmul_precision("high")
        return f"cuda:{jax_device.local_hardware_id or 0}"
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    return "cpu"


def time_call(fn: Callable[[], None]) -> float:
    """Seconds one blocking call takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_step(fn: Callable[[], None]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) of one blocking call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(sides: dict[str, Callable[[], None]], steps: int, warmup: int) -> tuple[dict, dict]:
    """Per-step (wall, CPU) seconds of each side after `warmup` untimed calls each, taking turns (order flipping)."""
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    wall, cpu = {name: [] for name in sides}, {name: [] for name in sides}
    names = list(sides)
    for i in range(steps):
        for name in (names if i % 2 == 0 else names[::-1]):
            w, c = time_step(sides[name])
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def matmul_peak(dtype: str, n: int, reps: int = 5) -> float:
    """FLOP/s of an [n, n] x [n, n] jax matmul at `dtype`: median of `reps` blocking calls after a warm-up."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.dtype(dtype))
    mm = jax.jit(jnp.matmul)
    block(mm(a, b))
    return 2.0 * n ** 3 / statistics.median(time_call(lambda: block(mm(a, b))) for _ in range(reps))


def torch_matmul_peak(dtype: str, n: int, device: str, reps: int = 5) -> float:
    """The same matmul in torch on the peer's device (context for the peer's figures)."""
    import torch
    t = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=t) for _ in range(2))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    run = lambda: (a @ b, sync())
    run()
    return 2.0 * n ** 3 / statistics.median(time_call(run) for _ in range(reps))


def device_name(device) -> str:
    """GPU/TPU: its kind; CPU: the /proc/cpuinfo model name and the core count jax may use."""
    if device.platform != "cpu":
        return f"{device.device_kind} ({device.platform})"
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores (CPU)"


def device_memory(device) -> tuple[int | None, str]:
    """(bytes, what they are): the allocator's peak on accelerators; on CPU XLA's footprint is reported instead."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return None, "none"


def peer_memory(device: str) -> int | None:
    """torch's peak allocated bytes on a CUDA device (None on CPU)."""
    import torch
    return int(torch.cuda.max_memory_allocated(device)) if device.startswith("cuda") else None


class CompileTimeout(Exception):
    """torch.compile ran past --peer_compile_timeout."""


def try_compiled_peer(config, device: str, timeout_s: int) -> tuple[Callable | None, dict]:
    """The torch.compile'd peer after its first (compiling) call, or None and the error; bounded by SIGALRM."""
    def on_alarm(signum, frame):
        raise CompileTimeout(f"torch.compile did not finish within --peer_compile_timeout={timeout_s} s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(timeout_s)
    start = time.perf_counter()
    try:
        step = build_peer(config, device, compile_model=True)
        step()
        return step, {"peer_compile_s": round(time.perf_counter() - start, 1)}
    except Exception as e:  # noqa: BLE001  (any compile failure is reported, not fatal)
        return None, {"peer_compiled_error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def spread(times: list[float]) -> dict:
    """min / median / max seconds."""
    return {"min": min(times), "median": statistics.median(times), "max": max(times)}


def profile_ours(ours: dict, directory: str, steps: int) -> dict:
    """A jax.profiler trace (perfetto json too) of `steps` of our steps, the step's HLO, and the top-op summary."""
    from benchmarks.trace_summary import markdown, summarize, summarize_categories
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "step.hlo.txt"), "w") as f:
        f.write(ours["hlo_text"]())
    with jax.profiler.trace(directory, create_perfetto_trace=True):
        for _ in range(steps):
            ours["step"]()
    rows, categories = summarize(directory, steps=steps), summarize_categories(directory, steps=steps)
    print(markdown(rows, steps), flush=True)
    print("\n".join(f"| {c['category']} | {c['share']:.1%} | {c['ms_per_step']} |" for c in categories), flush=True)
    return {"profile_top_ops": rows, "profile_categories": categories}


def build_variant(args: argparse.Namespace, item: str) -> dict:
    """Our step with one more config override, or with one XLA compile option (an `xla_...=VALUE` item)."""
    config = build_config(args)
    if item.startswith("xla_"):
        key, _, value = item.partition("=")
        return build_ours(config, {key: value})
    apply_override(config, item, "--variant")
    validate_model(config.model)
    return build_ours(config)


def run(args: argparse.Namespace) -> dict:
    """Build both sides, time them in turns and return the result row."""
    config = build_config(args)
    device = jax.devices()[0]
    load_before = os.getloadavg()
    ours = build_ours(config)
    peak_n = args.peak_size or (2048 if device.platform == "cpu" else 8192)
    peak = matmul_peak(args.dtype, peak_n)
    sides = {"ours": ours["step"]}
    sides.update({f"variant {v}": build_variant(args, v)["step"] for v in args.variant})
    extra: dict = {}
    torch_device = None
    if args.peer == "yes":
        torch_device = setup_torch(device)
        sides["peer"] = build_peer(config, torch_device, compile_model=False)
        compile_peer = args.peer_compile == "yes" or (args.peer_compile == "auto" and device.platform == "gpu")
        if compile_peer:
            compiled, extra = try_compiled_peer(config, torch_device, args.peer_compile_timeout)
            if compiled is not None:
                sides["peer_compiled"] = compiled
        extra["peer_matmul_flops_per_s"] = torch_matmul_peak(args.dtype, peak_n, torch_device)
        extra["peer_attention"] = sides["peer"].attention  # the HF attention implementation (sdpa: fused)
    times, cpu_times = interleaved(sides, args.steps, args.warmup)
    result = summarize_run(args, config, device, ours, peak, peak_n, times, extra, torch_device)
    result.update({f"{'' if name == 'ours' else name + '_'}cpu_s": spread(t) for name, t in cpu_times.items()
                   if not name.startswith("variant ")})
    result["variants"] = {name[len("variant "):]: variant_row(times, cpu_times, name) for name in times
                          if name.startswith("variant ")}
    if args.profile:
        result["profile_dir"] = args.profile
        result.update(profile_ours(ours, args.profile, args.profile_steps))
    result["load_avg_before"], result["load_avg_after"] = [round(x, 2) for x in load_before], \
        [round(x, 2) for x in os.getloadavg()]
    return result


def variant_row(times: dict, cpu_times: dict, name: str) -> dict:
    """One variant's step-time and CPU-time spreads and its speed-up over the plain step (median and min)."""
    return {"step_s": spread(times[name]), "cpu_s": spread(cpu_times[name]),
            "speedup_median": statistics.median(times["ours"]) / statistics.median(times[name]),
            "speedup_min": min(times["ours"]) / min(times[name]),
            "cpu_speedup_median": statistics.median(cpu_times["ours"]) / statistics.median(cpu_times[name])}


def summarize_run(args, config, device, ours: dict, peak: float, peak_n: int, times: dict, extra: dict,
                  torch_device: str | None) -> dict:
    """The JSON row: img/s, step-time spreads, FLOPs, MFU against the measured peak, memory, device, ratio."""
    b, flops = config.data.global_batch_size, ours["flops"]
    med = {name: statistics.median(t) for name, t in times.items()}
    mem, mem_kind = device_memory(device)
    r = {"model": args.model, "batch": b, "dtype": args.dtype, "objective": args.objective,
         "device": device_name(device), "num_devices": jax.device_count(),
         "jax": jax.__version__, "steps": args.steps, "warmup": args.warmup, "overrides": args.set,
         "img_per_s": b / med["ours"], "step_s": spread(times["ours"]), "flops_per_step": flops,
         "peak_matmul_n": peak_n, "peak_flops_per_s": peak, "mfu": flops / med["ours"] / peak,
         "compile_s": round(ours["compile_s"], 1), "memory_bytes": mem, "memory_kind": mem_kind,
         "xla_memory_bytes": ours["xla_memory_bytes"],
         "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if "peer" in times:
        import torch
        r.update({"peer": "transformers ViTMAEForPreTraining + torch.optim.AdamW, eager",
                  "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                  "peer_img_per_s": b / med["peer"], "peer_step_s": spread(times["peer"]),
                  "peer_mfu": flops / med["peer"] / peak, "peer_memory_bytes": peer_memory(torch_device),
                  "ratio": med["peer"] / med["ours"]})
    if "peer_compiled" in times:
        r.update({"peer_compiled_img_per_s": b / med["peer_compiled"],
                  "peer_compiled_step_s": spread(times["peer_compiled"]),
                  "ratio_vs_compiled": med["peer_compiled"] / med["ours"]})
    r.update(extra)
    r["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return r


def markdown_block(r: dict, command: str) -> str:
    """A dated markdown block (machine, command, loads, one row per side) for RESULTS.md."""
    gb = lambda x: "-" if x is None else f"{x / 2 ** 30:.2f}"
    rows = [("mim_jax (jit, AOT-compiled)", r["img_per_s"], r["step_s"], r["mfu"], r.get("cpu_s"))]
    for name, v in r.get("variants", {}).items():
        med = v["step_s"]["median"]
        rows.append((f"mim_jax, variant `{name}`", r["batch"] / med, v["step_s"], r["flops_per_step"] / med
                     / r["peak_flops_per_s"], v["cpu_s"]))
    if "peer_img_per_s" in r:
        rows.append(("HF ViTMAEForPreTraining, eager", r["peer_img_per_s"], r["peer_step_s"], r["peer_mfu"],
                     r.get("peer_cpu_s")))
    if "peer_compiled_img_per_s" in r:
        rows.append(("HF ViTMAEForPreTraining, torch.compile", r["peer_compiled_img_per_s"],
                     r["peer_compiled_step_s"], r["flops_per_step"] / r["peer_compiled_step_s"]["median"]
                     / r["peak_flops_per_s"], r.get("peer_compiled_cpu_s")))
    lines = [f"### Step throughput, {r['date']}: {r['model']} batch {r['batch']} {r['dtype']} {r['objective']}"
             f" on {r['device']}", "",
             f"`{command}`; jax {r['jax']}" + (f", torch {r['torch']} ({r['torch_threads']} threads)"
                                               if "torch" in r else "") +
             f"; load average (1/5/15 min) {'/'.join(map(str, r['load_avg_before']))} before, "
             f"{'/'.join(map(str, r['load_avg_after']))} after. FLOPs/step {r['flops_per_step'] / 1e9:.1f} G "
             f"(MaxText convention); peak = {r['peak_matmul_n']}^2 matmul at {r['dtype']}: "
             f"{r['peak_flops_per_s'] / 1e9:.1f} GFLOP/s (jax)" +
             (f", {r['peer_matmul_flops_per_s'] / 1e9:.1f} GFLOP/s (torch)" if "peer_matmul_flops_per_s" in r else "")
             + f". Memory: ours {gb(r['memory_bytes'] or r['xla_memory_bytes'])} GiB "
             f"({r['memory_kind'] if r['memory_bytes'] else 'XLA memory analysis of the step'}), "
             f"process peak RSS {gb(r['peak_rss_bytes'])} GiB.", "",
             "| side | img/s | step s min / median / max | MFU vs measured peak | process CPU-s per step (median) |",
             "|---|---|---|---|---|"]
    for name, ips, s, mfu, cpu in rows:
        lines.append(f"| {name} | {ips:.2f} | {s['min']:.3f} / {s['median']:.3f} / {s['max']:.3f} | {mfu:.1%} | "
                     f"{'-' if cpu is None else format(cpu['median'], '.3f')} |")
    if "ratio" in r:
        lines += ["", f"Ratio ours / peer (median step times): **{r['ratio']:.2f}x** (min step times: "
                  f"{r['peer_step_s']['min'] / r['step_s']['min']:.2f}x; CPU-s per step: "
                  f"{r['peer_cpu_s']['median'] / r['cpu_s']['median']:.2f}x)" +
                  (f"; vs torch.compile {r['ratio_vs_compiled']:.2f}x" if "ratio_vs_compiled" in r else "") +
                  (f"; torch.compile failed: {r['peer_compiled_error']}" if "peer_compiled_error" in r else "") + "."]
    return "\n".join(lines) + "\n"


def append_results(path: str, text: str) -> None:
    """Append `text` to the markdown file at `path` after a blank line."""
    with open(path, "a") as f:
        f.write("\n" + text)


def main(argv: list[str] | None = None) -> dict:
    """Run, append the markdown block where asked, print the JSON row last."""
    args = parse_args(argv)
    result = run(args)
    if args.results:
        command = "python benchmarks/step_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
        append_results(args.results, markdown_block(result, command.strip()))
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
