"""Quiet start-up: a run's console shows this project's lines, not the start-up noise of the libraries it loads.

Imported first by the CLI entry points (`mim_jax.pretrain`, `mim_jax.evaluate`, `mim_jax.plan`,
`mim_jax.convert`, `mim_jax.data.ingest` and their console scripts), before anything loads TensorFlow: its
C++ runtime reads these variables once, when it loads. TensorFlow comes in through clu's TensorBoard writer
(`train/run_log.py`) and tfds (TFDS sources); it computes nothing of ours, it only writes event files.

What each variable silences (measured with TensorFlow 2.21, jax 0.10):

* `TF_ENABLE_ONEDNN_OPTS=0`: TensorFlow logs ``I... port.cc:153] oneDNN custom operations are on. You may
  see slightly different numerical results ...`` at load, twice, whatever the log level. Turning its oneDNN
  kernels off changes no number of ours (the model runs in XLA, not in TensorFlow ops).
* `TF_CPP_MIN_LOG_LEVEL=1`: TensorFlow's C++ INFO lines (and XLA's, which reads the same variable), e.g. ``cpu_feature_guard.cc] This
  TensorFlow binary is optimized to use available CPU instructions ...``. Warnings and errors still print.
* absl's ``WARNING: All log messages before absl::InitializeLog() is called are written to STDERR`` comes
  before the first C++ log line of a process; with the INFO lines above gone it is not printed at all.

Python warnings and logging, and everything this project prints, are untouched. A value already set in the
environment wins (`setdefault`), so `TF_CPP_MIN_LOG_LEVEL=0 python -m mim_jax.pretrain ...` shows it all again.
"""
from __future__ import annotations

import os

QUIET_ENV = {
    "TF_ENABLE_ONEDNN_OPTS": "0",
    "TF_CPP_MIN_LOG_LEVEL": "1",
}


def quiet_startup() -> None:
    """Set the variables above, unless the user set them; call before TensorFlow (clu, tfds) is imported."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)


quiet_startup()
