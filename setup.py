"""mim_jax: masked-image-modeling pre-training of Vision Transformers in JAX."""
from setuptools import find_packages, setup

setup(
    name="mim_jax",
    version="0.1.0",
    description="Masked image modeling (MAE, SimMIM, teacher targets) for ViT-B to ViT-6.5B in JAX/Flax.",
    python_requires=">=3.10",
    packages=find_packages(include=["mim_jax", "mim_jax.*"]),
    install_requires=[
        "jax>=0.10.2,<0.12",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "ml_collections>=1.1,<2",
        "clu>=0.0.12,<0.1",
        "tensorflow-datasets>=4.9.10,<5",
        "tensorflow-cpu>=2.21,<2.22",
        "tensorboard>=2.21,<2.22",
        "pillow>=11,<14",
        "opencv-python-headless>=4.11,<5",  # 4.11 added IMREAD_COLOR_RGB; headless: no libGL needed.
        "numpy>=2.0,<3",
        "msgpack>=1.0,<2",
        "pyarrow>=14,<27",
        "tqdm>=4.60,<5",
        "safetensors>=0.4,<1",  # the mim_jax weights format and timm export (no torch needed for either)
        "matplotlib>=3.8,<4",  # result figures (notebooks/, study plots); the Agg backend, no display
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.6,<4", "jupytext>=1.16,<2", "nbclient>=0.10,<1", "nbformat>=5.10,<6",
                 "ipykernel>=6.29,<8"],  # tests/test_notebooks.py executes notebooks/ in a kernel
        "tpu": ["jax[tpu]>=0.10.2,<0.12"],
        "convert": ["torch==2.13.0", "transformers>=4.40,<6"],  # PyTorch files and the HF parity tests
    },
    entry_points={
        "console_scripts": [
            "mim-pretrain=mim_jax.pretrain:run",
            "mim-eval=mim_jax.evaluate.__main__:run",
            "mim-plan=mim_jax.plan:run",
            "mim-ingest=mim_jax.data.ingest:main",
            "mim-convert=mim_jax.convert.__main__:run",
            "mim-study=mim_jax.study.__main__:run",
        ],
    },
)
