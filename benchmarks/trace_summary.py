"""Where a jitted step's time goes: top XLA ops of a `jax.profiler` trace (its perfetto json), by self time.

    python benchmarks/trace_summary.py /tmp/step_trace [--steps=3] [--hlo=/tmp/step_trace/step.hlo.txt]

Reads the newest `plugins/profile/*/perfetto_trace.json.gz` under the directory (written by
`jax.profiler.trace(dir, create_perfetto_trace=True)`). Every event carrying an `hlo_op` is one execution
of one XLA op (a thunk on XLA:CPU); its self time is its duration minus the ops nested in it on the same
thread (a `while` holds its body). Ops are grouped by kind (the name without its `.N` suffix, e.g.
`ynn_fusion`, `dot`, `multiply_add_fusion`); with the step's HLO text the top ops also show their opcode
and shape, and dots their FLOPs and achieved GFLOP/s. Shares are of the summed op self time over all
threads (thread-seconds), so they add up to 100% whatever the parallelism.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re


def load_events(directory: str) -> list[dict]:
    """The complete ('X') events with an hlo_op from the newest perfetto trace under `directory`."""
    files = sorted(glob.glob(os.path.join(directory, "plugins", "profile", "*", "perfetto_trace.json.gz")))
    if not files:
        raise FileNotFoundError(f"no plugins/profile/*/perfetto_trace.json.gz under {directory}")
    with gzip.open(files[-1]) as f:
        events = json.load(f)["traceEvents"]
    return [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]


def self_times(events: list[dict]) -> list[tuple[str, float]]:
    """(op name, self microseconds) per event: duration minus directly nested events on the same thread."""
    out = []
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e["tid"]].append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []  # [end, name, self]
        for e in evs:
            while stack and stack[-1][0] <= e["ts"]:
                _, name, own = stack.pop()
                out.append((name, own))
            if stack:
                stack[-1][2] -= e["dur"]
            stack.append([e["ts"] + e["dur"], e["args"]["hlo_op"], e["dur"]])
        out.extend((name, own) for _, name, own in stack)
    return out


def op_kind(name: str) -> str:
    """`multiply_add_fusion.12` -> `multiply_add_fusion`."""
    return re.sub(r"\.\d+$", "", name)


def hlo_instructions(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its HLO line (shape, opcode, operands), from an HLO module's text."""
    lines = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)", line)
        if m:
            lines.setdefault(m.group(1), m.group(2))
    return lines


def hlo_computations(hlo_text: str) -> dict[str, str]:
    """Computation name -> its body text, from an HLO module's text."""
    comps, name, body = {}, None, []
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$", line)
        if m:
            name, body = m.group(1), []
        elif line.strip() == "}" and name:
            comps[name], name = "\n".join(body), None
        elif name:
            body.append(line)
    return comps


MOVEMENT = {"copy", "bitcast", "transpose", "broadcast", "dynamic-slice", "dynamic-update-slice", "slice",
            "concatenate", "wrapped", "pad", "gather", "scatter", "reshape", "fusion", "iota", "constant"}


def op_category(name: str, lines: dict[str, str], comps: dict[str, str]) -> str:
    """Coarse class of an op: weight matmul, batched matmul (attention), data movement, reduction, elementwise."""
    line = lines.get(name, "")
    called = re.search(r"calls=%?([\w.\-]+)", line)
    body = line + "\n" + (comps.get(called.group(1), "") if called else "")
    dots = [d for d in body.splitlines() if re.search(r"\b(dot|convolution)\(", d)]
    if dots:
        return "matmul, batched (attention)" if any("lhs_batch_dims" in d for d in dots) else "matmul (weights)"
    kind = op_kind(name)
    if kind in ("while", "conditional", "call"):
        return "control flow"
    tokens = set(re.split(r"_(?=[a-z])", kind))
    if tokens <= MOVEMENT:
        return "data movement (copy, transpose, broadcast, (dynamic-)slice/update)"
    if "reduce" in kind:
        return "reductions (+ fused elementwise)"
    return "elementwise fusions"


def describe(line: str, limit: int = 110) -> str:
    """Short form of an HLO line: result shape, opcode and (for fusions) the kind."""
    text = re.sub(r",\s*metadata=\{.*", "", line)
    text = re.sub(r"\{[0-9,]+\}", "", text)
    return text if len(text) <= limit else text[:limit] + "..."


def summarize(directory: str, steps: int = 1, hlo_path: str = "", top: int = 12) -> list[dict]:
    """Top op kinds by share of op self time: [{kind, share, ms_per_step, count_per_step, top_ops}]."""
    times = self_times(load_events(directory))
    total = sum(t for _, t in times) or 1.0
    kinds: dict[str, list] = collections.defaultdict(lambda: [0.0, 0, collections.Counter()])
    for name, t in times:
        k = kinds[op_kind(name)]
        k[0] += t
        k[1] += 1
        k[2][name] += t
    hlo_path = hlo_path or os.path.join(directory, "step.hlo.txt")
    lines = hlo_instructions(open(hlo_path).read()) if os.path.exists(hlo_path) else {}
    rows = []
    for kind, (t, count, per_op) in sorted(kinds.items(), key=lambda kv: -kv[1][0])[:top]:
        ops = [{"op": n, "ms_per_step": round(v / 1e3 / steps, 2), **({"hlo": describe(lines[n])} if n in lines
                                                                      else {})}
               for n, v in per_op.most_common(3)]
        rows.append({"kind": kind, "share": round(t / total, 4), "ms_per_step": round(t / 1e3 / steps, 1),
                     "count_per_step": count // max(steps, 1), "top_ops": ops})
    return rows


def summarize_categories(directory: str, steps: int = 1, hlo_path: str = "") -> list[dict]:
    """Share of op self time by coarse category (needs the step's HLO text to see inside fusions)."""
    hlo_path = hlo_path or os.path.join(directory, "step.hlo.txt")
    text = open(hlo_path).read() if os.path.exists(hlo_path) else ""
    lines, comps = hlo_instructions(text), hlo_computations(text)
    times = self_times(load_events(directory))
    total = sum(t for _, t in times) or 1.0
    acc: collections.Counter = collections.Counter()
    for name, t in times:
        acc[op_category(name, lines, comps)] += t
    return [{"category": c, "share": round(t / total, 4), "ms_per_step": round(t / 1e3 / max(steps, 1), 1)}
            for c, t in acc.most_common()]


def markdown(rows: list[dict], steps: int = 1) -> str:
    """The summary as a markdown table."""
    out = ["| op kind | share of op time | ms/step (thread time) | runs/step | largest ops (ms/step) |",
           "|---|---|---|---|---|"]
    for r in rows:
        tops = "; ".join(f"{o['op']} {o['ms_per_step']}" + (f" `{o['hlo']}`" if "hlo" in o else "")
                         for o in r["top_ops"])
        out.append(f"| {r['kind']} | {r['share']:.1%} | {r['ms_per_step']} | {r['count_per_step']} | {tops} |")
    return "\n".join(out)


def main() -> None:
    """Print the markdown table and the JSON rows of a trace directory."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("directory")
    p.add_argument("--steps", type=int, default=1, help="steps the trace holds (for per-step figures)")
    p.add_argument("--hlo", default="", help="the step's HLO text (default DIR/step.hlo.txt when present)")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    rows = summarize(args.directory, args.steps, args.hlo, args.top)
    print(markdown(rows, args.steps))
    categories = summarize_categories(args.directory, args.steps, args.hlo)
    print("\n| category | share of op time | ms/step (thread time) |\n|---|---|---|")
    print("\n".join(f"| {c['category']} | {c['share']:.1%} | {c['ms_per_step']} |" for c in categories))
    print(json.dumps({"kinds": rows, "categories": categories}))


if __name__ == "__main__":
    main()
