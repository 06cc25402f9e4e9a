"""Which teacher layers a shallow student starts from, for each of its two stacks.

A layer map is a strictly increasing list of teacher layer indices, one per student layer, for the
Gemma backbone and one for the action expert. Shallow-π (arXiv 2601.20262, §3: "uniform
subsampling" of both the VLM backbone and the action head) uses the same uniform list for both,
the default here. The published reference code keeps the backbone's first L layers and subsamples
only the expert uniformly: `make_layer_map(18, 6, "first", expert_strategy="uniform")`.

    >>> make_layer_map(18, 6).indices
    (0, 3, 7, 10, 14, 17)
    >>> make_layer_map(18, 4, strategy="last").indices
    (14, 15, 16, 17)
    >>> lm = make_layer_map(18, 6, "first", expert_strategy="uniform")
    >>> lm.backbone, lm.expert
    ((0, 1, 2, 3, 4, 5), (0, 3, 7, 10, 14, 17))
    >>> parse_layers("0,3,7,10,14,17")
    (0, 3, 7, 10, 14, 17)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

STRATEGIES = ("uniform", "first", "last", "explicit")
# config value of the expert's map meaning "whatever the backbone uses"
SAME = "same"
# Where the action expert's leaves sit in openpi's tree: every module of the second expert carries
# the `_1` suffix (q_einsum_1, mlp_1, pre_attention_norm_1, ...), LoRA leaves below them included.
LAYERS_PREFIX = "PaliGemma/llm/layers/"


def is_expert_leaf(path: str) -> bool:
    """True for a layer-stack leaf of the action expert, False for one of the backbone."""
    if not path.startswith(LAYERS_PREFIX):
        raise ValueError(f"param path: expected a layer-stack leaf under {LAYERS_PREFIX!r}, got {path!r}")
    return any(part.endswith("_1") for part in path[len(LAYERS_PREFIX):].split("/"))


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """Student layer j is initialised from teacher layer `indices[j]` in the backbone and from
    `expert_indices[j]` in the action expert (the backbone's list when not given)."""

    teacher_depth: int
    indices: tuple[int, ...]
    strategy: str = "explicit"
    expert_indices: tuple[int, ...] | None = None
    expert_strategy: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        validate_layer_map(self.indices, self.teacher_depth, len(self.indices))
        if self.expert_indices is None:
            object.__setattr__(self, "expert_indices", self.indices)
            if self.expert_strategy is None:
                object.__setattr__(self, "expert_strategy", self.strategy)
        else:
            object.__setattr__(self, "expert_indices", tuple(int(i) for i in self.expert_indices))
            # Both stacks are scanned together, layer by layer: they must have the same depth.
            try:
                validate_layer_map(self.expert_indices, self.teacher_depth, len(self.indices))
            except ValueError as e:
                raise ValueError(f"expert layer map: {e}") from None
            if self.expert_strategy is None:
                object.__setattr__(self, "expert_strategy", "explicit")
        for name in ("strategy", "expert_strategy"):
            if getattr(self, name) not in STRATEGIES:
                raise ValueError(f"{name}: expected one of {STRATEGIES}, got {getattr(self, name)!r}")

    @property
    def student_depth(self) -> int:
        return len(self.indices)

    @property
    def backbone(self) -> tuple[int, ...]:
        return self.indices

    @property
    def expert(self) -> tuple[int, ...]:
        return self.expert_indices

    @property
    def shared(self) -> bool:
        """One list for both stacks (the paper's student)."""
        return self.indices == self.expert_indices

    def rows(self, path: str) -> tuple[int, ...]:
        """The teacher layers the layer-stack leaf `path` keeps (backbone or expert by its name)."""
        return self.expert_indices if is_expert_leaf(path) else self.indices

    @property
    def label(self) -> str:
        """'uniform', or 'backbone first, expert uniform' when the stacks differ."""
        if self.shared:
            return self.strategy
        return f"backbone {self.strategy}, expert {self.expert_strategy}"

    def to_dict(self) -> dict:
        # `indices`/`strategy` stay the backbone's (older readers take them as the map of both
        # stacks, which they are unless `expert_indices` differs); the expert's are always written.
        return {
            "teacher_depth": self.teacher_depth,
            "student_depth": self.student_depth,
            "indices": list(self.indices),
            "strategy": self.strategy,
            "expert_indices": list(self.expert_indices),
            "expert_strategy": self.expert_strategy,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LayerMap:
        """Reads to_dict's output; a record without expert_* (older students) maps both stacks alike."""
        expert = d.get("expert_indices")
        lm = cls(int(d["teacher_depth"]), tuple(d["indices"]), d.get("strategy", "explicit"),
                 None if expert is None else tuple(expert),
                 d.get("expert_strategy", None if expert is not None else d.get("strategy", "explicit")))
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


def _stack_indices(teacher_depth: int, student_depth: int | None, strategy: str,
                   layers: Sequence[int] | None) -> tuple[tuple[int, ...], str]:
    if layers is not None:
        layers = tuple(int(i) for i in layers)
        depth = len(layers) if student_depth is None else int(student_depth)
        validate_layer_map(layers, teacher_depth, depth)
        return layers, "explicit"
    if student_depth is None:
        raise ValueError("student_depth: required unless an explicit layers list is given")
    builders = {"uniform": uniform_indices, "first": first_indices, "last": last_indices}
    if strategy not in builders:
        raise ValueError(
            f"strategy: expected one of {tuple(builders)} (or pass layers=...), got {strategy!r}")
    return builders[strategy](int(teacher_depth), int(student_depth)), strategy


def make_layer_map(teacher_depth: int, student_depth: int | None = None, strategy: str = "uniform",
                   layers: Sequence[int] | None = None, *, expert_strategy: str | None = None,
                   expert_layers: Sequence[int] | None = None) -> LayerMap:
    """Build a validated map from a strategy, or from an explicit `layers` list.

    With `layers`, `student_depth` may be omitted; if given it must equal len(layers). The expert
    follows the backbone unless `expert_strategy` or `expert_layers` is given.
    """
    indices, strategy = _stack_indices(teacher_depth, student_depth, strategy, layers)
    if expert_strategy is None and expert_layers is None:
        return LayerMap(int(teacher_depth), indices, strategy)
    try:
        expert, expert_strategy = _stack_indices(teacher_depth, len(indices), expert_strategy or "uniform",
                                                 expert_layers)
    except ValueError as e:
        raise ValueError(f"expert layer map: {e}") from None
    return LayerMap(int(teacher_depth), indices, strategy, expert, expert_strategy)


def from_config(teacher_depth: int, student_depth: int, layer_map: str, expert_map: str = SAME) -> LayerMap:
    """The map of config.student: `layer_map` (both stacks, or the backbone when `expert_map` is set)
    and `expert_map` ('same' or a strategy or indices for the expert), each 'uniform' | 'first' |
    'last' or comma-separated teacher layers such as '0,3,7'."""

    def one(text: str, key: str):
        text = str(text)
        if text in ("uniform", "first", "last"):
            return text, None
        try:
            return "explicit", parse_layers(text)
        except ValueError:
            raise ValueError(f"student.{key}: expected uniform, first, last or teacher layer indices such as "
                             f"'0,3,7', got {text!r}") from None

    strategy, layers = one(layer_map, "layer_map")
    if str(expert_map) == SAME:
        return make_layer_map(teacher_depth, student_depth, strategy, layers)
    e_strategy, e_layers = one(expert_map, "expert_map")
    return make_layer_map(teacher_depth, student_depth, strategy, layers, expert_strategy=e_strategy,
                          expert_layers=e_layers)
