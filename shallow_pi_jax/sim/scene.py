"""The tabletop scene of the reach task: what is on the table and what the instruction asks for.

Coordinates: the table is the square [-1, 1]^2, x to the right and y up (so image row 0 is y = +1).
A scene is plain data; sampling it is a pure function of a numpy Generator, so a seed fixes the
whole episode layout.
"""
from __future__ import annotations

import dataclasses

import numpy as np

# Colours far apart in RGB so a 64x64 render with hard edges keeps them distinct.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 205, 30),
    "purple": (145, 55, 195),
    "cyan": (40, 200, 210),
}
SHAPES: tuple[str, ...] = ("block", "ball")
# Several phrasings so the policy has to find the colour word rather than memorise one string.
TEMPLATES: tuple[str, ...] = (
    "move to the {colour} {shape}",
    "go to the {colour} {shape}",
    "reach the {colour} {shape}",
    "touch the {colour} {shape}",
)


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Layout constants of the table (world units; the table is 2 units wide)."""

    num_objects: int = 3
    object_range: float = 0.8  # object centres lie in [-object_range, object_range]^2
    min_object_separation: float = 0.45  # centre to centre
    ee_range: float = 0.9  # end-effector start lies in [-ee_range, ee_range]^2
    min_start_distance: float = 0.4  # start this far from every object (never begins touching one)
    object_size: float = 0.12  # half side of a block, radius of a ball

    def __post_init__(self):
        if not 1 <= self.num_objects <= len(PALETTE):
            raise ValueError(
                f"num_objects: expected 1..{len(PALETTE)} (one distinct colour each), got {self.num_objects}")
        if not 0 < self.object_range <= 1 or not 0 < self.ee_range <= 1:
            raise ValueError(f"object_range/ee_range: expected in (0, 1], got {self.object_range}/{self.ee_range}")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One episode's layout. `positions` is float64 [N, 2]; `target` indexes the named object."""

    positions: np.ndarray
    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    target: int
    ee_start: np.ndarray
    instruction: str

    @property
    def target_position(self) -> np.ndarray:
        return self.positions[self.target]


def object_name(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def sample_scene(rng: np.random.Generator, config: SceneConfig = SceneConfig()) -> Scene:
    """Draws object positions, colours, shapes, the target, the start and the instruction."""
    n = config.num_objects
    positions = np.zeros((n, 2))
    # Rejection sampling; with the default sizes a draw is accepted within a few tries.
    for i in range(n):
        for _ in range(10_000):
            p = rng.uniform(-config.object_range, config.object_range, size=2)
            if i == 0 or np.min(np.linalg.norm(positions[:i] - p, axis=1)) >= config.min_object_separation:
                positions[i] = p
                break
        else:
            raise ValueError(
                f"min_object_separation={config.min_object_separation} too large to place "
                f"{n} objects in range {config.object_range}")
    for _ in range(10_000):
        ee = rng.uniform(-config.ee_range, config.ee_range, size=2)
        if np.min(np.linalg.norm(positions - ee, axis=1)) >= config.min_start_distance:
            break
    else:
        raise ValueError(f"min_start_distance={config.min_start_distance} leaves no room for the start")
    names = list(PALETTE)
    colours = tuple(names[i] for i in rng.permutation(len(names))[:n])
    shapes = tuple(SHAPES[i] for i in rng.integers(0, len(SHAPES), size=n))
    target = int(rng.integers(0, n))
    template = TEMPLATES[int(rng.integers(0, len(TEMPLATES)))]
    instruction = template.format(colour=colours[target], shape=shapes[target])
    return Scene(positions=positions, colours=colours, shapes=shapes, target=target,
                 ee_start=ee, instruction=instruction)


def all_instructions() -> list[str]:
    """Every instruction the task can produce (used to train the demo tokenizer)."""
    return [t.format(colour=c, shape=s) for t in TEMPLATES for c in PALETTE for s in SHAPES]
