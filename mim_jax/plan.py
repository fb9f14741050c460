"""Entry point: python -m mim_jax.plan --config=... [--topology=v5p:8x8x4] (the planner is mim_jax.cluster.plan)."""
import sys

from mim_jax import console  # noqa: F401  (first: quiet library start-up, before TensorFlow loads)
from mim_jax.cluster.plan import run

if __name__ == "__main__":
    sys.exit(run())
