"""Entry point: python -m mim_jax.pretrain --config=configs/demo.py --workdir=DIR (the loop is mim_jax.train.loop)."""
from mim_jax import console  # noqa: F401  (first: quiet library start-up, before TensorFlow loads)
from mim_jax.train.loop import run

if __name__ == "__main__":
    run()
