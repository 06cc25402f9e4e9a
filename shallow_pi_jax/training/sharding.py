"""Device mesh and shardings for training: a 2-D (`data`, `fsdp`) mesh.

The batch is split over both axes (every device holds B / n_devices examples). Parameters,
optimizer state and the frozen teacher are sharded FSDP-style: each array is split along its
largest axis that the `fsdp` size divides; arrays below `min_shard_size` elements are replicated
(sharding them costs more in collectives than it saves in memory).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """Mesh over all (or the given) devices; -1 on one axis takes whatever the other leaves.

    Both axes are `Auto`: shardings are given at the jit boundary and XLA propagates them inside,
    which is what the FSDP step wants (recent jax defaults `make_mesh` to Explicit axes).
    """
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    if fsdp == -1 and data == -1:
        raise ValueError("mesh: at most one of data / fsdp may be -1")
    if fsdp == -1:
        if data < 1 or n % data:
            raise ValueError(f"mesh: data={data} must divide the number of devices ({n})")
        fsdp = n // data
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh: fsdp={fsdp} must divide the number of devices ({n})")
    if data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"mesh: data ({data}) × fsdp ({fsdp}) must equal the number of devices ({n})")
    return jax.make_mesh((data, fsdp), (DATA, FSDP), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_shard_size: int = 2 ** 14) -> P:
    """Shard the largest axis divisible by `fsdp_size`; replicate small or indivisible arrays."""
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_shard_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[axis] = FSDP
            return P(*spec)
    return P()


def fsdp_shardings(tree: Any, mesh: Mesh, min_shard_size: int = 2 ** 14) -> Any:
    """NamedShardings for every array leaf of `tree` (arrays or ShapeDtypeStructs)."""
    size = mesh.shape[FSDP]
    return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), size, min_shard_size)), tree)


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assemble each process's share of the batch into global arrays sharded over (data, fsdp).

    On one host this is a plain device_put; on a pod each process passes only the examples it
    loaded and jax stitches them into one logical array.
    """
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def process_streams(mesh: Mesh, num_streams: int) -> tuple[int, ...]:
    """The data streams whose examples land on this process's devices, in global batch order.

    Stream j fills rows [j b, (j + 1) b) of the global batch (b = B / num_streams); this process
    passes exactly those rows to `global_batch` (jax orders a process's rows by their global index,
    also when a pod's mesh does not give a process one contiguous block)."""
    n = mesh.devices.size
    if num_streams % n:
        raise ValueError(f"data.num_streams: expected a multiple of the number of devices ({n}), got {num_streams}")
    rows = batch_sharding(mesh).addressable_devices_indices_map((num_streams,))
    return tuple(sorted({j for (s,) in rows.values() for j in range(*s.indices(num_streams))}))


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
    n = mesh.shape[DATA] * mesh.shape[FSDP]
    if global_batch_size % n:
        raise ValueError(f"batch_size ({global_batch_size}) must be divisible by the number of devices in the "
                         f"(data, fsdp) mesh ({n})")
    if global_batch_size % jax.process_count():
        raise ValueError(f"batch_size ({global_batch_size}) must be divisible by the process count "
                         f"({jax.process_count()})")
