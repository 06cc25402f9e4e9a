"""Initialise a shallow student from an openpi teacher by picking teacher layers.

Every leaf under `PaliGemma/llm/layers/` is a layer stack (axis 0 = layer) holding the Gemma
backbone and, with the `_1` suffix, the action expert. The student takes the same teacher layers
for both, unless its LayerMap gives the expert a list of its own (LayerMap.rows). A LoRA
fine-tuned teacher read from disk arrives merged (openpi_params and ParamsReader merge its LoRA
pairs on reading); a tree in memory that still has LoRA pairs gets them merged into the
student's weights here, so a student never carries LoRA leaves. Every other leaf (SigLIP,
embedder, final norms, action/time heads) is carried over unchanged: the student's depth only
changes the layer stacks.

    from shallow_pi_jax.training.layer_map import make_layer_map
    lm = make_layer_map(teacher_depth(params), 6)             # [0, 3, 7, 10, 14, 17] for 18 layers
    student = student_params(params, lm)                      # works on numpy, jax and sharded arrays

For checkpoints on disk use shallow_pi_jax.make_student, which builds the student leaf by leaf.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from shallow_pi_jax.checkpoint import lora
from shallow_pi_jax.checkpoint.layer_reader import ParamsReader
from shallow_pi_jax.checkpoint.openpi_params import (
    flatten_params,
    unflatten_params,
    validate_params,
)
from shallow_pi_jax.training.layer_map import LayerMap, validate_layer_map

LAYERS_PREFIX = "PaliGemma/llm/layers/"
# One leaf of each expert that every openpi pi0 / pi0.5 checkpoint has; used to reject other trees.
REQUIRED_LAYER_LEAVES = ("PaliGemma/llm/layers/attn/q_einsum/w", "PaliGemma/llm/layers/attn/q_einsum_1/w")


def is_layer_leaf(path: str) -> bool:
    return path.startswith(LAYERS_PREFIX)


def teacher_depth(params: Mapping) -> int:
    """Depth of the teacher's layer stacks; ValueError if the tree is not an openpi pi0/pi0.5 tree
    or its stacks disagree."""
    return stack_depth({p: tuple(np.shape(x)) for p, x in flatten_params(params).items()})


def stack_depth(shapes: Mapping[str, tuple[int, ...]]) -> int:
    missing = [p for p in REQUIRED_LAYER_LEAVES if p not in shapes]
    if missing:
        raise ValueError(
            f"teacher params: missing {missing}; expected an openpi pi0/pi0.5 tree with a Gemma "
            f"backbone and an action expert under {LAYERS_PREFIX!r}")
    depths: dict[int | None, list[str]] = {}
    for p, shape in shapes.items():
        if is_layer_leaf(p):
            depths.setdefault(shape[0] if shape else None, []).append(p)
    if len(depths) != 1 or None in depths:
        detail = "; ".join(f"axis 0 = {d}: {ps[:3]}{' ...' if len(ps) > 3 else ''}" for d, ps in depths.items())
        raise ValueError(f"teacher params: layer stacks under {LAYERS_PREFIX!r} disagree on depth ({detail})")
    return next(iter(depths))


def _layer_map(layers: LayerMap | Sequence[int], depth: int) -> LayerMap:
    """`layers` as a LayerMap for a teacher of `depth` layers (a plain list maps both stacks alike)."""
    if isinstance(layers, LayerMap):
        if layers.teacher_depth != depth:
            raise ValueError(
                f"layer map: built for teacher depth {layers.teacher_depth}, but the teacher has {depth} layers")
        return layers
    indices = tuple(int(i) for i in layers)
    validate_layer_map(indices, depth, len(indices))
    return LayerMap(depth, indices)


def student_shapes(teacher: Mapping, layers: LayerMap | Sequence[int]) -> dict:
    """Tree of jax.ShapeDtypeStruct of the student (teacher leaves may be arrays or ShapeDtypeStructs)."""
    flat = flatten_params(teacher)
    lmap = _layer_map(layers, stack_depth({p: tuple(x.shape) for p, x in flat.items()}))
    pairs = lora.find_pairs({p: tuple(x.shape) for p, x in flat.items()})
    merged = {p for pair in pairs.values() for p in (pair.a, pair.b)}
    return unflatten_params({
        p: jax.ShapeDtypeStruct((lmap.student_depth, *x.shape[1:]) if is_layer_leaf(p) else tuple(x.shape), x.dtype)
        for p, x in flat.items() if p not in merged})


def student_params(teacher: Mapping, layers: LayerMap | Sequence[int], *, expected: Mapping | None = None) -> dict:
    """Teacher params -> student params (pure function).

    Each layer stack keeps the rows of axis 0 that `layers` gives its stack (LayerMap.rows:
    backbone or expert); every other leaf is the teacher's own object, not a copy. numpy leaves
    stay numpy; jax.Arrays are indexed on their devices, keeping their NamedSharding (axis 0 falls
    back to replicated when the student depth does not divide over its mesh axes), so nothing is
    gathered onto one host. LoRA pairs still in the tree are merged after the layers are picked
    (each layer merges on its own, so the result is the student of the merged teacher), with
    openpi's alphas.
    `expected`, if given, is checked with validate_params (e.g. the student model's eval_shape).
    """
    flat = flatten_params(teacher)
    lmap = _layer_map(layers, stack_depth({p: tuple(np.shape(x)) for p, x in flat.items()}))
    out = dict(flat)
    on_device: dict[tuple[int, ...], dict[str, jax.Array]] = {}
    for p, x in flat.items():
        if not is_layer_leaf(p):
            continue
        if isinstance(x, jax.Array):
            on_device.setdefault(lmap.rows(p), {})[p] = x
        else:
            out[p] = np.take(np.asarray(x), lmap.rows(p), axis=0)
    for idx, leaves in on_device.items():  # one gather per stack map (one when both stacks share it)
        out.update(_take_on_device(leaves, idx))
    # Only the student's own copies are merged (the layer stacks), never a teacher array in place.
    out, _ = lora.merge_lora(out)
    student = unflatten_params(out)
    if expected is not None:
        validate_params(student, expected)
    return student


def _take_on_device(leaves: dict[str, jax.Array], idx: tuple[int, ...]) -> dict[str, jax.Array]:
    out_shardings = {p: _student_sharding(x.sharding, len(idx)) for p, x in leaves.items()}
    rows = np.asarray(idx, np.int32)

    # One compiled gather for all stacks; the index list is a compile-time constant.
    def take(tree):
        return {p: jnp.take(x, rows, axis=0) for p, x in tree.items()}

    if all(s is not None for s in out_shardings.values()):
        return jax.jit(take, out_shardings=out_shardings)(leaves)
    return jax.jit(take)(leaves)


def _student_sharding(sharding: jax.sharding.Sharding, depth: int):
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return None  # let XLA place it like the input
    spec = list(sharding.spec)
    if spec and spec[0] is not None:
        axes = spec[0] if isinstance(spec[0], tuple) else (spec[0],)
        if depth % math.prod(sharding.mesh.shape[a] for a in axes):
            spec[0] = None
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec),
                                      memory_kind=sharding.memory_kind)


def iter_student_leaves(reader: ParamsReader, layers: LayerMap | Sequence[int],
                        dtype: Any = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (path, numpy leaf) of the student, reading only the needed layers from disk.

    Memory at any time is one student leaf plus the teacher storage chunks it is read from.
    """
    lmap = _layer_map(layers, stack_depth({p: tuple(s.shape) for p, s in reader.shapes.items()}))
    for p in reader.paths:
        yield p, reader.read(p, layers=lmap.rows(p) if is_layer_leaf(p) else None, dtype=dtype)
