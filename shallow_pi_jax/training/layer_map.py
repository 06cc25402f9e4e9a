"""Which teacher layers a shallow student starts from.

A layer map is a strictly increasing list of teacher layer indices, one per student layer. The same
list is applied to the Gemma backbone and to the action expert (Shallow-pi, §2 of DESIGN.md).

    >>> make_layer_map(18, 6).indices
    (0, 3, 7, 10, 14, 17)
    >>> make_layer_map(18, 4, strategy="last").indices
    (14, 15, 16, 17)
    >>> parse_layers("0,3,7,10,14,17")
    (0, 3, 7, 10, 14, 17)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

STRATEGIES = ("uniform", "first", "last", "explicit")


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """Student layer j is initialised from teacher layer `indices[j]`."""

    teacher_depth: int
    indices: tuple[int, ...]
    strategy: str = "explicit"

    def __post_init__(self):
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        validate_layer_map(self.indices, self.teacher_depth, len(self.indices))
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {STRATEGIES}, got {self.strategy!r}")

    @property
    def student_depth(self) -> int:
        return len(self.indices)

    def to_dict(self) -> dict:
        return {
            "teacher_depth": self.teacher_depth,
            "student_depth": self.student_depth,
            "indices": list(self.indices),
            "strategy": self.strategy,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LayerMap:
        lm = cls(int(d["teacher_depth"]), tuple(d["indices"]), d.get("strategy", "explicit"))
        if "student_depth" in d and int(d["student_depth"]) != lm.student_depth:
            raise ValueError(
                f"student_depth: {d['student_depth']} does not match len(indices)={lm.student_depth}")
        return lm


def uniform_indices(teacher_depth: int, student_depth: int) -> tuple[int, ...]:
    """round(linspace(0, L_t - 1, L_s)) with Python's round-half-to-even (the paper's choice)."""
    _check_depths(teacher_depth, student_depth)
    return tuple(round(float(x)) for x in np.linspace(0, teacher_depth - 1, student_depth))


def first_indices(teacher_depth: int, student_depth: int) -> tuple[int, ...]:
    _check_depths(teacher_depth, student_depth)
    return tuple(range(student_depth))


def last_indices(teacher_depth: int, student_depth: int) -> tuple[int, ...]:
    _check_depths(teacher_depth, student_depth)
    return tuple(range(teacher_depth - student_depth, teacher_depth))


def _check_depths(teacher_depth: int, student_depth: int) -> None:
    if int(teacher_depth) < 1:
        raise ValueError(f"teacher_depth: expected >= 1, got {teacher_depth}")
    if not 1 <= int(student_depth) <= int(teacher_depth):
        raise ValueError(
            f"student_depth: expected 1 <= student_depth <= teacher_depth={teacher_depth}, "
            f"got {student_depth}")


def validate_layer_map(indices: Sequence[int], teacher_depth: int, student_depth: int) -> None:
    """Raise ValueError naming the problem unless `indices` is a usable map."""
    indices = list(indices)
    if len(indices) != student_depth:
        raise ValueError(
            f"layer map length: expected student depth {student_depth}, got {len(indices)} "
            f"indices {indices}")
    if not indices:
        raise ValueError("layer map is empty: a student needs at least one layer")
    bad = [i for i in indices if not 0 <= i < teacher_depth]
    if bad:
        raise ValueError(
            f"layer map index out of range: {bad} not in [0, {teacher_depth - 1}] "
            f"(teacher depth {teacher_depth}); map {indices}")
    for a, b in zip(indices, indices[1:]):
        if b <= a:
            raise ValueError(
                f"layer map must be strictly increasing: {a} is followed by {b} in {indices}")


def parse_layers(text: str) -> tuple[int, ...]:
    """'0,3,7' -> (0, 3, 7); a clear error for anything else."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"layers: expected comma-separated integers like '0,3,7', got {text!r}") from None


def make_layer_map(teacher_depth: int, student_depth: int | None = None, strategy: str = "uniform",
                   layers: Sequence[int] | None = None) -> LayerMap:
    """Build a validated map from a strategy, or from an explicit `layers` list.

    With `layers`, `student_depth` may be omitted; if given it must equal len(layers).
    """
    if layers is not None:
        layers = tuple(int(i) for i in layers)
        depth = len(layers) if student_depth is None else int(student_depth)
        validate_layer_map(layers, teacher_depth, depth)
        return LayerMap(int(teacher_depth), layers, "explicit")
    if student_depth is None:
        raise ValueError("student_depth: required unless an explicit layers list is given")
    builders = {"uniform": uniform_indices, "first": first_indices, "last": last_indices}
    if strategy not in builders:
        raise ValueError(
            f"strategy: expected one of {tuple(builders)} (or pass layers=...), got {strategy!r}")
    return LayerMap(int(teacher_depth), builders[strategy](int(teacher_depth), int(student_depth)), strategy)
