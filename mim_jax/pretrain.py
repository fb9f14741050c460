"""Entry point: python -m mim_jax.pretrain --config=configs/demo.py --workdir=DIR (the loop is mim_jax.train.loop)."""
from mim_jax.train.loop import run

if __name__ == "__main__":
    run()
