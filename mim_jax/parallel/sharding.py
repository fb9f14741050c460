"""Device mesh from config, logical-axis rules, and shardings for state and batches."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mim_jax.errors import ConfigError

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
    ("classes", "tensor"),       # classifier heads (WSP's 28K classes); their inputs are FSDP-sharded on embed
    ("act_classes", "tensor"),   # logits and multi-hot targets [batch, classes]
    ("head_in", None),
)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Fill a single -1 in `mesh.shape` so the product equals the device count."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ConfigError(f"mesh.shape={shape} needs {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        raise ConfigError(f"mesh.shape={shape}: use positive sizes and at most one -1 (fills the rest)")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ConfigError(f"mesh.shape={shape} cannot be filled on {num_devices} devices "
                             f"({num_devices} is not divisible by {known})")
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ConfigError(f"mesh.shape={shape} uses {math.prod(shape)} devices but {num_devices} are available; "
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
    return batch_shards(dict(mesh.shape), rules)


def batch_shards(mesh_shape: Mapping[str, int], rules) -> int:
    """Number of shards of the batch dimension for mesh axis sizes `mesh_shape` (no devices needed)."""
    axes = dict(rules).get("batch")
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    return math.prod(mesh_shape[a] for a in axes)


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


def _spec_axes(entry) -> tuple:
    """Mesh axes of one PartitionSpec entry (None, a name, or a tuple of names)."""
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _leaf_paths(tree) -> list[tuple[str, Any]]:
    return [("/".join(str(getattr(k, "key", k)) for k in path), leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def check_divisible(abstract_params, shardings, mesh: Mesh) -> None:
    """Every sharded parameter dimension must divide evenly over its mesh axes (else a ConfigError naming it)."""
    for (path, leaf), sharding in zip(_leaf_paths(abstract_params), jax.tree.leaves(shardings)):
        for dim, entry in enumerate(sharding.spec):
            axes = _spec_axes(entry)
            parts = math.prod(mesh.shape[a] for a in axes)
            if leaf.shape[dim] % parts:
                sizes = ", ".join(f"{a}={mesh.shape[a]}" for a in axes)
                divisors = [d for d in range(1, leaf.shape[dim] + 1) if leaf.shape[dim] % d == 0]
                raise ConfigError(
                    f"mesh.shape={tuple(mesh.shape.values())}: parameter {path} {tuple(leaf.shape)} dim {dim} "
                    f"(size {leaf.shape[dim]}) does not split over mesh axes {sizes}; use sizes whose product "
                    f"divides {leaf.shape[dim]} (one of {divisors[:12]}) or change mesh.rules")


def replicated_bytes(abstract_params, shardings, mesh: Mesh) -> tuple[int, int, list[str]]:
    """(bytes of parameters not split over any mesh axis of size > 1, total bytes, largest such paths)."""
    total, replicated, names = 0, 0, []
    for (path, leaf), sharding in zip(_leaf_paths(abstract_params), jax.tree.leaves(shardings)):
        nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        total += nbytes
        split = any(mesh.shape[a] > 1 for entry in sharding.spec for a in _spec_axes(entry))
        if not split:
            replicated += nbytes
            names.append((nbytes, path))
    return replicated, total, [p for _, p in sorted(names, reverse=True)[:5]]


def check_replication(abstract_params, shardings, mesh: Mesh, max_fraction: float) -> float:
    """With an FSDP axis, fail when more than `max_fraction` of parameter bytes stay replicated."""
    replicated, total, largest = replicated_bytes(abstract_params, shardings, mesh)
    fraction = replicated / max(total, 1)
    if mesh.shape["fsdp"] > 1 and fraction > max_fraction:
        raise ConfigError(
            f"mesh.max_replicated_fraction={max_fraction}: {fraction:.1%} of parameter bytes stay replicated "
            f"on an fsdp={mesh.shape['fsdp']} mesh (largest: {', '.join(largest)}); map their logical axes to "
            f"'fsdp' in mesh.rules, or raise mesh.max_replicated_fraction")
    return fraction


def check_batch_layout(global_batch_size: int, micro_batches: int, mesh: Mesh, rules, process_count: int) -> None:
    """Each micro-batch must split evenly over the data-parallel devices, and the batch over processes."""
    check_batch_split(global_batch_size, micro_batches, dict(mesh.shape), rules, process_count)


def check_batch_split(global_batch_size: int, micro_batches: int, mesh_shape: Mapping[str, int], rules,
                      process_count: int) -> None:
    """check_batch_layout on mesh axis sizes alone (e.g. a launcher checking a job it has not started)."""
    dp = batch_shards(mesh_shape, rules)
    step = math.lcm(dp * micro_batches, process_count)
    if global_batch_size % step:
        raise ConfigError(
            f"data.global_batch_size={global_batch_size} does not split into optim.grad_accum_steps="
            f"{micro_batches} micro-batches over the data-parallel size {dp} (mesh {dict(mesh_shape)}) and "
            f"{process_count} process(es); use a multiple of {step}")


def sharding_context(mesh: Mesh, rules) -> contextlib.ExitStack:
    """Mesh + logical-axis rules in scope, needed while tracing models with logical constraints."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(rules))
    return stack
