"""Device mesh from config, logical-axis rules, and shardings for state and batches."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes. Batch over (data, fsdp); weights FSDP-sharded on embed; Megatron-style
# tensor parallelism on mlp / heads. Unlisted logical names (e.g. head_dim, layers) stay replicated.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("decoder_embed", None),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("patch", None),
    ("layers", None),
    ("seq", None),
    ("act_embed", None),
    ("classes", None),
)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fill a single -1 in `mesh.shape` so the product equals the device count."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh.shape={shape} needs {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh.shape={shape}: use positive sizes and at most one -1 (fills the rest)")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh.shape={shape} cannot be filled on {num_devices} devices "
                             f"({num_devices} is not divisible by {known})")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh.shape={shape} uses {math.prod(shape)} devices but {num_devices} are available; "
                         f"set e.g. --config.mesh.shape='(-1,1,1)'")
    return shape


def make_mesh(mesh_cfg, devices: Sequence[Any] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types (GSPMD propagation) over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(mesh_cfg.shape, len(devices))
    return jax.make_mesh(shape, MESH_AXES, devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_rules(mesh_cfg) -> tuple:
    """The logical->mesh rules of the config as a tuple of (name, axes) pairs."""
    return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in mesh_cfg.rules)


def data_parallel_size(mesh: Mesh, rules) -> int:
    """Number of shards of the batch dimension under `rules`."""
    axes = dict(rules).get("batch")
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    return math.prod(mesh.shape[a] for a in axes)


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
    """Sharding of a batch array with `ndim` dims: leading dim by the 'batch' rule, the rest replicated."""
    spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules)
    return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, P())


def state_shardings(init_fn: Callable, mesh: Mesh, rules, *args) -> tuple[Any, Any]:
    """(abstract boxed state, NamedShardings of the unboxed state) for `init_fn(*args)`, without allocating."""
    abstract = jax.eval_shape(init_fn, *args)
    specs = nn.get_partition_spec(abstract)
    return abstract, nn.logical_to_mesh_sharding(specs, mesh, rules)


def global_batch(local: dict, mesh: Mesh, rules) -> dict:
    """Assemble process-local numpy batches into global jax.Arrays sharded on the batch axis."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, v.ndim), v)
            for k, v in local.items()}
