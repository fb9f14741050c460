"""Training logs: WORKDIR/metrics.jsonl, TensorBoard events (clu), and a human progress line. Process 0 only."""
from __future__ import annotations

import json
import time

import jax

from mim_jax import console
from mim_jax import workdir as run_dirs

METRICS_FILE = "metrics.jsonl"


def _step_of(line: str) -> float:
    """The step of a metrics line; infinity for a line cut short by a killed run (so it is dropped)."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return float("inf")


def truncate_metrics(path: str, last_step: int) -> None:
    """Keep only lines with step <= last_step (a resumed run recomputes the later steps exactly)."""
    if not run_dirs.exists(path):
        return
    lines = [line + "\n" for line in run_dirs.read_text(path).splitlines() if line.strip()]
    kept = [line for line in lines if _step_of(line) <= last_step]
    if len(kept) != len(lines):
        run_dirs.write_text(path, "".join(kept))


def format_duration(seconds: float) -> str:
    """12345 -> '3h25m45s'."""
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class RunLog:
    """Writes one JSON line and TensorBoard scalars per logged step and prints a progress line."""

    def __init__(self, workdir: str, total_steps: int, global_batch_size: int, start_step: int,
                 tensorboard: bool = True, flops_per_step: float | None = None, peak_flops: float | None = None):
        """`flops_per_step` (model FLOPs) and `peak_flops` (summed over all devices) add MFU when both are known."""
        self.enabled = jax.process_index() == 0
        self.flops_per_step, self.peak_flops = flops_per_step, peak_flops
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self.path = run_dirs.join(workdir, METRICS_FILE)
        self._writer = None
        if self.enabled:
            truncate_metrics(self.path, start_step)
            if tensorboard:
                console.quiet_startup()  # before TensorFlow loads (CLIs did it already; this is for library use)
                from clu import (
                    metric_writers,  # imports TensorFlow: keep it out of module import time
                )
                self._writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))
        self._last_time = time.perf_counter()
        self._last_step = start_step

    def write(self, step: int, metrics: dict) -> dict:
        """Record `metrics` (python floats) for `step`, adding throughput; returns the logged row."""
        now = time.perf_counter()
        steps = max(step - self._last_step, 1)
        steps_per_sec = steps / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        row = {"step": step, **metrics, "steps_per_sec": steps_per_sec,
               "img_per_sec": steps_per_sec * self.global_batch_size}
        if self.flops_per_step and self.peak_flops:
            row["mfu"] = self.flops_per_step * steps_per_sec / self.peak_flops
        if self.enabled:
            run_dirs.append_text(self.path, json.dumps(row) + "\n")
            if self._writer is not None:
                self._writer.write_scalars(step, {k: v for k, v in row.items() if k != "step"})
            eta = (self.total_steps - step) / steps_per_sec
            mfu = f" | MFU {row['mfu']:.1%}" if "mfu" in row else ""
            print(f"step {step}/{self.total_steps} | loss {row['loss']:.4f} | lr {row['lr']:.2e} | "
                  f"{steps_per_sec:.2f} steps/s | {row['img_per_sec']:.0f} img/s{mfu} | ETA {format_duration(eta)}",
                  flush=True)
        return row

    def write_eval(self, step: int, scalars: dict) -> dict:
        """Append {'step', **scalars} of an evaluation (a row without 'loss') to metrics.jsonl and TensorBoard."""
        row = {"step": step, **scalars}
        if self.enabled:
            run_dirs.append_text(self.path, json.dumps(row) + "\n")
            if self._writer is not None:
                self._writer.write_scalars(step, scalars)
        self._last_time = time.perf_counter()  # evaluation time does not count against training throughput
        return row

    def close(self) -> None:
        """Flush TensorBoard events."""
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()

