"""benchmarks/step_throughput.py at a tiny size (ours and the HF peer): JSON fields and the appended table.

Timings are never asserted: this only checks that the harness runs and reports.
"""
import gzip
import json
import os
import subprocess
import sys

import pytest

from benchmarks import trace_summary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model=Ti/16", "--batch=4", "--steps=2", "--warmup=1", "--peak_size=256"] + [
    f"--set=model.{k}={v}" for k, v in dict(width=32, depth=1, heads=2, mlp_dim=64, image_size=32, patch_size=8).items()
] + [f"--set=mae.decoder.{k}={v}" for k, v in dict(width=16, depth=1, heads=2, mlp_ratio=2).items()]


def run_harness(args: list[str]) -> dict:
    """Run the script in a fresh process on one CPU device; return its last JSON line."""
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "step_throughput.py"), *args], env=env,
                         capture_output=True, text=True, timeout=240, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_tiny_run_reports_both_sides_and_appends_the_table(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    r = run_harness(TINY + [f"--results={results}"])
    for key in ("img_per_s", "peer_img_per_s", "ratio", "device", "step_s", "peer_step_s", "mfu", "flops_per_step",
                "peak_flops_per_s", "xla_memory_bytes", "peak_rss_bytes", "model", "batch", "dtype", "objective",
                "load_avg_before", "load_avg_after"):
        assert key in r, key
    assert r["img_per_s"] > 0 and r["peer_img_per_s"] > 0 and r["flops_per_step"] > 0
    assert abs(r["ratio"] - r["peer_step_s"]["median"] / r["step_s"]["median"]) < 1e-9
    assert "CPU" in r["device"] and (r["batch"], r["dtype"], r["objective"]) == (4, "float32", "mae")
    text = results.read_text()
    assert text.startswith("# Benchmark results\n") and "### Step throughput" in text
    assert "| mim_jax (jit, AOT-compiled) |" in text and "| HF ViTMAEForPreTraining, eager |" in text
    assert "Ratio ours / peer" in text and r["device"] in text


def test_self_times_subtract_nested_ops_on_the_same_thread(tmp_path):
    op = lambda name, ts, dur, tid=1: {"ph": "X", "tid": tid, "ts": ts, "dur": dur, "args": {"hlo_op": name}}
    events = [op("while.1", 0, 10), op("dot.2", 1, 4), op("fusion.3", 6, 2), op("dot.4", 0, 5, tid=2)]
    trace = tmp_path / "plugins" / "profile" / "run"
    trace.mkdir(parents=True)
    with gzip.open(trace / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events + [{"ph": "M", "name": "x"}]}, f)
    assert sorted(trace_summary.self_times(trace_summary.load_events(str(tmp_path)))) == \
        [("dot.2", 4), ("dot.4", 5), ("fusion.3", 2), ("while.1", 4)]
    rows = trace_summary.summarize(str(tmp_path))
    assert [r["kind"] for r in rows] == ["dot", "while", "fusion"] and rows[0]["share"] == 0.6


HLO = """HloModule jit_step

%fused_computation.1 (param_0: f32[4,8]) -> f32[4,8] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  ROOT %dot.1 = f32[4,8]{1,0} dot(%param_0, %param_0), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_computation.2 (param_0: f32[2,4,8]) -> f32[2,4,4] {
  %param_0 = f32[2,4,8]{2,1,0} parameter(0)
  ROOT %dot.2 = f32[2,4,4]{2,1,0} dot(%param_0, %param_0), lhs_batch_dims={0}, lhs_contracting_dims={2}
}

ENTRY %main (p: f32[4,8]) -> f32[4,8] {
  %ynn_fusion.3 = f32[4,8]{1,0} fusion(%p), kind=kCustom, calls=%fused_computation.1
  %ynn_fusion.4 = f32[2,4,4]{2,1,0} fusion(%x), kind=kCustom, calls=%fused_computation.2
  ROOT %copy_bitcast_fusion.5 = f32[4,8]{1,0} fusion(%ynn_fusion.3), kind=kLoop, calls=%fused_computation.9
}
"""


def test_op_categories_look_inside_fusions():
    lines, comps = trace_summary.hlo_instructions(HLO), trace_summary.hlo_computations(HLO)
    category = lambda name: trace_summary.op_category(name, lines, comps)
    assert category("ynn_fusion.3") == "matmul (weights)"
    assert category("ynn_fusion.4") == "matmul, batched (attention)"
    assert category("copy_bitcast_fusion.5").startswith("data movement")
    assert category("multiply_add_fusion.7") == "elementwise fusions"
    assert category("while.2") == "control flow"
