"""Multi-process start-up: join the JAX distributed system before any backend is touched.

`initialize()` runs once at the start of pretraining and evaluation. Which processes form the run:

1. Explicit, from the environment (any launcher; `launch/local_multihost.py` sets these):
   MIM_JAX_COORDINATOR_ADDRESS=host:port   process 0's address and a free port, the same on every process
   MIM_JAX_NUM_PROCESSES=N                 number of processes (>= 1)
   MIM_JAX_PROCESS_ID=i                    this process, 0 <= i < N
   MIM_JAX_LOCAL_DEVICE_IDS=0,1,...        optional: the local devices this process uses (default: all)
   Set all three or none of the first three.
2. Otherwise automatic, when jax's own cluster detection finds a multi-process environment: SLURM
   (`srun` with SLURM_NTASKS > 1), Open MPI (`mpirun`, OMPI_COMM_WORLD_SIZE > 1), or a multi-host Cloud
   TPU slice / multi-slice (TPU_WORKER_HOSTNAMES with several hosts, MEGASCALE_NUM_SLICES > 1, or the GCE
   TPU metadata). Then `jax.distributed.initialize()` picks coordinator, count and id itself.
3. Otherwise a single process: nothing to do.

MIM_JAX_DISTRIBUTED=off skips 2 (e.g. one process inside a multi-task SLURM allocation).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Mapping, Optional, Sequence

import jax

from mim_jax.errors import ConfigError

COORDINATOR_VAR = "MIM_JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_VAR = "MIM_JAX_NUM_PROCESSES"
PROCESS_ID_VAR = "MIM_JAX_PROCESS_ID"
LOCAL_DEVICE_IDS_VAR = "MIM_JAX_LOCAL_DEVICE_IDS"
MODE_VAR = "MIM_JAX_DISTRIBUTED"
EXPLICIT_VARS = (COORDINATOR_VAR, NUM_PROCESSES_VAR, PROCESS_ID_VAR)

# jax cluster environments we trust for automatic start-up (jax's names), with the variables holding the
# process count and id where they are plain integers. Kubernetes (API queries) and mpi4py (opt-in) are
# left out: use the explicit variables there.
AUTO_CLUSTERS = ("ompi", "slurm", "gketpu", "gcetpu")
COUNT_AND_ID_VARS = {"slurm": ("SLURM_NTASKS", "SLURM_PROCID"),
                     "ompi": ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")}
TPU_VARS = "TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES / TPU_WORKER_ID / MEGASCALE_NUM_SLICES / MEGASCALE_SLICE_ID"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins the run: mode 'explicit', 'auto' (a detected cluster) or 'single'."""
    mode: str
    num_processes: int = 1
    process_id: int = 0
    coordinator_address: Optional[str] = None
    local_device_ids: Optional[tuple[int, ...]] = None
    cluster: Optional[str] = None   # jax's name of the detected environment (mode 'auto')


_plan: Optional[Plan] = None        # set once initialize() has run in this process


def _parse_int(environ: Mapping[str, str], name: str, minimum: int) -> int:
    """The integer in environment variable `name` (>= minimum), else a ConfigError naming it."""
    raw = environ.get(name, "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ConfigError(f"environment variable {name}={value} must be >= {minimum}")
    return value


def _parse_process_id(environ: Mapping[str, str], name: str, num_processes: int, count_name: str) -> int:
    """A process id in [0, num_processes), else a ConfigError naming `name`."""
    process_id = _parse_int(environ, name, 0)
    if process_id >= num_processes:
        raise ConfigError(f"environment variable {name}={process_id} must be < {count_name}={num_processes} "
                          f"(ids run 0..{num_processes - 1})")
    return process_id


def _parse_coordinator(environ: Mapping[str, str]) -> str:
    """MIM_JAX_COORDINATOR_ADDRESS as 'host:port' with a valid port."""
    raw = environ.get(COORDINATOR_VAR, "").strip()
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"environment variable {COORDINATOR_VAR}={raw!r} must be host:port with a port in "
                          f"1..65535, e.g. 10.0.0.1:1234 (process 0's address, the same on every process)")
    return raw


def _parse_local_device_ids(environ: Mapping[str, str]) -> Optional[tuple[int, ...]]:
    """MIM_JAX_LOCAL_DEVICE_IDS '0,1,2' -> (0, 1, 2); unset or empty -> None (all local devices)."""
    raw = environ.get(LOCAL_DEVICE_IDS_VAR, "").strip()
    if not raw:
        return None
    try:
        ids = tuple(int(x) for x in raw.split(","))
    except ValueError:
        raise ConfigError(f"environment variable {LOCAL_DEVICE_IDS_VAR}={raw!r} must be comma-separated "
                          f"integers, e.g. 0,1,2,3") from None
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ConfigError(f"environment variable {LOCAL_DEVICE_IDS_VAR}={raw!r} must list distinct ids >= 0")
    return ids


def explicit_plan(environ: Mapping[str, str]) -> Optional[Plan]:
    """The plan from the MIM_JAX_* variables; None when none of them is set."""
    present = [name for name in EXPLICIT_VARS if environ.get(name, "").strip()]
    if not present:
        return None
    missing = [name for name in EXPLICIT_VARS if name not in present]
    if missing:
        raise ConfigError(f"environment variable(s) {', '.join(missing)} not set while {', '.join(present)} "
                          f"is; a multi-process run needs all of {', '.join(EXPLICIT_VARS)}")
    address = _parse_coordinator(environ)
    num = _parse_int(environ, NUM_PROCESSES_VAR, 1)
    pid = _parse_process_id(environ, PROCESS_ID_VAR, num, NUM_PROCESSES_VAR)
    return Plan("explicit", num, pid, address, _parse_local_device_ids(environ))


def detect_cluster() -> Optional[type]:
    """The first jax cluster environment of AUTO_CLUSTERS present in this process, else None."""
    try:
        from jax._src import clusters
        candidates = list(clusters.ClusterEnv._cluster_types)
    except (ImportError, AttributeError):  # private API moved: only the explicit variables work then
        logging.warning("mim_jax.parallel.distributed: jax cluster detection unavailable; set %s", ", ".join(EXPLICIT_VARS))
        return None
    for env in candidates:
        if getattr(env, "name", "") in AUTO_CLUSTERS and not getattr(env, "opt_in_only_method", False):
            if env.is_env_present():
                return env
    return None


def auto_plan() -> Optional[Plan]:
    """The plan of a detected multi-process cluster environment; None when there is none (or it has 1 process)."""
    environ = os.environ  # jax's detection reads os.environ too
    if environ.get(MODE_VAR, "auto").strip().lower() in ("off", "0", "false", "none"):
        return None
    env = detect_cluster()
    if env is None:
        return None
    if env.name in COUNT_AND_ID_VARS:
        count_var, id_var = COUNT_AND_ID_VARS[env.name]
        num = _parse_int(environ, count_var, 1)
        pid = _parse_process_id(environ, id_var, num, count_var)
    else:
        try:
            num, pid = int(env.get_process_count()), int(env.get_process_id())
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{env.name} cluster environment ({TPU_VARS}): {err}") from None
        if not 0 <= pid < num:
            raise ConfigError(f"{env.name} cluster environment ({TPU_VARS}): process id {pid} is not in "
                              f"[0, {num})")
    if num == 1:
        return None
    return Plan("auto", num, pid, None, _parse_local_device_ids(environ), env.name)


def resolve() -> Plan:
    """The plan for this process from os.environ (explicit vars, then a detected cluster, else single)."""
    plan = explicit_plan(os.environ) or auto_plan()
    if plan is None and os.environ.get(LOCAL_DEVICE_IDS_VAR, "").strip():
        raise ConfigError(f"environment variable {LOCAL_DEVICE_IDS_VAR} is set but this is a single-process run "
                          f"(no {', '.join(EXPLICIT_VARS)}, no multi-process cluster detected); unset it")
    return plan or Plan("single")


def is_initialized() -> bool:
    """Whether initialize() already ran in this process (or jax.distributed was started by someone else)."""
    return _plan is not None or jax.distributed.is_initialized()


def _backends_initialized() -> bool:
    """Whether a jax backend exists already (then it is too late to join a distributed system)."""
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


def _start(plan: Plan) -> None:
    """jax.distributed.initialize for an explicit or auto plan."""
    if _backends_initialized():
        raise RuntimeError(f"mim_jax.parallel.distributed.initialize() must run before any jax computation or "
                           f"jax.devices() call in a multi-process run ({plan.mode}, {plan.num_processes} "
                           f"processes), but a jax backend is already initialized")
    local: Optional[Sequence[int]] = list(plan.local_device_ids) if plan.local_device_ids is not None else None
    if plan.mode == "explicit":
        jax.distributed.initialize(coordinator_address=plan.coordinator_address,
                                   num_processes=plan.num_processes, process_id=plan.process_id,
                                   local_device_ids=local, cluster_detection_method="deactivate")
    else:
        jax.distributed.initialize(local_device_ids=local, cluster_detection_method=plan.cluster)


def describe(plan: Plan) -> str:
    """One line: processes, devices (global and local) and how the run was formed."""
    device = jax.devices()[0]
    kind = device.platform if device.device_kind.lower() == device.platform else f"{device.platform} {device.device_kind}"
    how = {"explicit": f"explicit {COORDINATOR_VAR}={plan.coordinator_address}",
           "auto": f"auto-detected {plan.cluster} cluster", "single": "single process"}[plan.mode]
    return (f"distributed: {jax.process_count()} process(es), {jax.device_count()} devices "
            f"({jax.local_device_count()} local per process, {kind}); {how}")


def initialize(verbose: bool = True) -> Plan:
    """Join the run's processes (once per process; later calls return the first plan) and print one line."""
    global _plan
    if _plan is not None:
        return _plan
    if jax.distributed.is_initialized():  # started by the caller with jax.distributed.initialize(...)
        from jax._src.distributed import global_state as state
        _plan = Plan("explicit", state.num_processes, state.process_id, state.coordinator_address)
    else:
        plan = resolve()
        if plan.mode != "single":
            _start(plan)
        _plan = plan
    if verbose and jax.process_index() == 0:
        print(describe(_plan), flush=True)
    return _plan
