"""The device mesh, logical-axis sharding rules and multi-host start-up.

Every array that is sharded carries logical axis names (weights: bare names such as `embed`;
activations: `act_*`; KV cache: `cache_*`). One table maps each name to mesh axes of the
`("data", "fsdp", "tensor")` mesh. A mesh axis that does not divide the dimension is dropped for
that array (it is replicated instead), so tiny test models run on any mesh.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axes. Override entries with `config.mesh.rules` (see `logical_rules`).
DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    # Weights: FSDP shards the model dimension, tensor parallelism the heads / MLP / vocab.
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": (),
    "layers": (),
    "norm": (),
    # Activations.
    "act_batch": BATCH_AXES,
    "act_seq": (),
    "act_embed": (),
    "act_heads": ("tensor",),
    "act_mlp": ("tensor",),
    "act_vocab": ("tensor",),
    # KV cache.
    "cache_batch": BATCH_AXES,
    "cache_seq": (),
    "cache_kv_heads": ("tensor",),
}

Axes = Sequence[str | None]
Rules = Mapping[str, Sequence[str]]

_RULES: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("rules", default=None)


@contextlib.contextmanager
def logical_rules(rules: Rules | None) -> Iterator[None]:
    """Overrides DEFAULT_RULES entries (e.g. `config.mesh.rules`) for every sharding derived
    from logical names inside the block (nested blocks stack): the one way rules travel, so no
    function takes a rules argument.

    Rules are read when a function is traced: jit's cache does not see them, so enter the block
    around the whole run, before anything that uses them is jitted.
    """
    rules = {name: tuple(axes) for name, axes in (rules or {}).items()}
    token = _RULES.set({**(_RULES.get() or {}), **rules})
    try:
        yield
    finally:
        _RULES.reset(token)


def make_mesh(shape: Sequence[int] = (1, 1, -1),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `("data", "fsdp", "tensor")` mesh; one entry of `shape` may be -1 (all the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {shape} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one entry may be -1")
    known = int(np.prod([s for s in shape if s != -1]))
    if -1 in shape:
        if len(devices) % known:
            raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, "
                         f"{len(devices)} available")
    grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES)


def logical_to_spec(axes: Axes, shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> PartitionSpec:
    """The PartitionSpec of an array with logical `axes`, under DEFAULT_RULES overridden by
    `logical_rules`.

    With `shape` and `mesh`, mesh axes that do not divide a dimension (or that an earlier
    dimension already uses) are dropped, so the array is replicated along them.
    """
    rules = {**DEFAULT_RULES, **(_RULES.get() or {})}
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise KeyError(f"no sharding rule for logical axis {name!r}; known: {sorted(rules)}")
        kept, size = [], 1
        for mesh_axis in rules[name]:
            if mesh_axis in used:
                continue
            n = mesh.shape[mesh_axis] if mesh is not None else 1
            if shape is not None and shape[i] % (size * n):
                continue
            kept.append(mesh_axis)
            size *= n
        used.update(kept)
        spec.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, axes: Axes, shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(axes, shape, mesh))


def tree_shardings(mesh: Mesh, axes_tree, shapes_tree):
    """Shardings of a pytree, from a tree of logical axes and a tree of arrays or shapes."""
    return jax.tree.map(lambda axes, x: named_sharding(mesh, axes, x.shape),
                        axes_tree, shapes_tree, is_leaf=lambda a: isinstance(a, tuple))


def constrain(x: jax.Array, axes: Axes) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside a mesh context."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty:
        return x
    spec = logical_to_spec(axes, x.shape, mesh)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def host_to_global(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local rows -> global arrays split over the batch axes (data, fsdp)."""
    sharding = named_sharding(mesh, ("act_batch",))
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def per_host(total: int, what: str) -> int:
    """This process's share of `total` rows; `what` names the config field in the error."""
    n = jax.process_count()
    if total % n:
        raise ValueError(f"{what}={total} does not divide over {n} processes")
    return total // n


def check_batch_divides(rows: int, mesh: Mesh, what: str) -> None:
    """Fails, naming `what`, when `rows` do not split evenly over the batch axes of `mesh`."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % shards:
        raise ValueError(f"{what}: {rows} rows do not divide over the {shards} batch shards of "
                         f"mesh {dict(mesh.shape)} (data x fsdp)")


def process_sum(x: float) -> float:
    """Sum of a host-side number over all processes."""
    if jax.process_count() == 1:
        return float(x)
    from jax.experimental import multihost_utils

    return float(multihost_utils.process_allgather(np.float64(x)).sum())


def process_max(x: int) -> int:
    if jax.process_count() == 1:
        return int(x)
    from jax.experimental import multihost_utils

    return int(multihost_utils.process_allgather(np.int64(x)).max())


def process_mean(values: Mapping[str, float], weight: float) -> dict[str, float]:
    """Means over all processes of host-local means, weighted by each host's `weight`."""
    if jax.process_count() == 1:
        return dict(values)
    from jax.experimental import multihost_utils

    keys = sorted(values)
    local = np.array([values[k] * weight for k in keys] + [weight], np.float64)
    total = multihost_utils.process_allgather(local).sum(axis=0)
    return {k: float(total[i] / total[-1]) for i, k in enumerate(keys)}


def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
    """Starts `jax.distributed` when the job spans several processes.

    With no arguments, JAX detects the cluster (TPU pods, SLURM, ...); on a single host with no
    cluster environment this is a no-op.
    """
    if coordinator is None and num_processes is None:
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError):
            return  # Not a cluster: a single process.
        return
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
