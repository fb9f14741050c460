"""mim_jax: masked-image-modeling pretraining of Vision Transformers (ViT-B/16 to ViT-6.5B/14) in JAX."""
import os as _os

# XLA:CPU's concurrency-optimized scheduler lets devices of one process reach collectives in different
# orders; with several (fake) CPU devices that dead-locks the in-process rendezvous ("Termination
# timeout ... all gather / all reduce"). Turning it off costs nothing measurable on 2 cores and only
# affects the CPU backend. It must be in XLA_FLAGS before jax initializes its CPU client.
_CPU_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
if "xla_cpu_enable_concurrency_optimized_scheduler" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " " + _CPU_FLAG).strip()
