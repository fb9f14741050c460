"""mim_jax: masked-image-modeling pretraining of Vision Transformers (ViT-B/16 to ViT-6.5B/14) in JAX."""
from mim_jax import xla_cpu_threads as _xla_cpu_threads

# Before anything imports jax's backends: XLA reads these when it creates its CPU client (CPU-only settings;
# they let fake CPU devices run collectives without starving XLA:CPU's thread pool, see docs/testing.md).
_xla_cpu_threads.configure()
