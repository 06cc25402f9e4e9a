"""The tabletop scene of the reach task: what is on the table and what the instruction asks for.

Two tasks share the table. `"side"` (the default): one object, and the instruction names one of its
four sides ("go left of the red block"); the four spots beside it are the goals, invisible, and
stopping on a wrong one fails. `"object"`: several objects of distinct colours, and the instruction
names one of them ("reach the blue ball"); the objects are the goals.

Why "side" is the default: a policy must still read the image (where the object is) and the
instruction (which side), but each is a one-step lookup, which the tiny transformer of the demo
learns from scratch in minutes on a CPU. "object" needs the colour word bound to an image location,
which it learned far too slowly there (docs/ablation.md).

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
# "side" task: the goal's direction from the object (y up), and its phrasings.
SIDES: dict[str, tuple[int, int]] = {"left of": (-1, 0), "right of": (1, 0), "above": (0, 1), "below": (0, -1)}
SIDE_TEMPLATES: tuple[str, ...] = (
    "move {side} the {colour} {shape}",
    "go {side} the {colour} {shape}",
    "stop {side} the {colour} {shape}",
    "reach the spot {side} the {colour} {shape}",
)
TASKS = ("side", "object")


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Layout constants of the table (world units; the table is 2 units wide)."""

    task: str = "side"
    # "side" task
    anchor_range: float = 0.5  # the object's centre lies in [-anchor_range, anchor_range]^2
    side_offset: float = 0.4  # goal distance from the object's centre
    # "object" task
    num_objects: int = 3
    object_range: float = 0.8  # object centres lie in [-object_range, object_range]^2
    min_object_separation: float = 0.45  # centre to centre
    # both
    ee_range: float = 0.9  # end-effector start lies in [-ee_range, ee_range]^2
    min_start_distance: float = 0.4  # start this far from every goal (never begins touching one)
    object_size: float = 0.15  # half side of a block, radius of a ball

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {self.task!r}")
        if self.task == "side" and not 0 < self.anchor_range + self.side_offset <= 1:
            raise ValueError(f"anchor_range + side_offset: expected in (0, 1] so every goal is on the table, "
                             f"got {self.anchor_range} + {self.side_offset}")
        if not 1 <= self.num_objects <= len(PALETTE):
            raise ValueError(
                f"num_objects: expected 1..{len(PALETTE)} (one distinct colour each), got {self.num_objects}")
        if not 0 < self.object_range <= 1 or not 0 < self.ee_range <= 1:
            raise ValueError(f"object_range/ee_range: expected in (0, 1], got {self.object_range}/{self.ee_range}")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One episode's layout.

    `positions` float64 [N, 2] are the drawn objects; `goals` float64 [G, 2] the places a touch
    counts (the objects themselves, or the four spots beside the object); `target` indexes `goals`.
    `side` is the named side ("side" task) or None.
    """

    positions: np.ndarray
    colours: tuple[str, ...]
    shapes: tuple[str, ...]
    goals: np.ndarray
    target: int
    ee_start: np.ndarray
    instruction: str
    side: str | None = None

    @property
    def target_position(self) -> np.ndarray:
        return self.goals[self.target]


def object_name(colour: str, shape: str) -> str:
    return f"{colour} {shape}"


def _object_positions(rng: np.random.Generator, config: SceneConfig) -> np.ndarray:
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
    return positions


def _start(rng: np.random.Generator, goals: np.ndarray, config: SceneConfig) -> np.ndarray:
    for _ in range(10_000):
        ee = rng.uniform(-config.ee_range, config.ee_range, size=2)
        if np.min(np.linalg.norm(goals - ee, axis=1)) >= config.min_start_distance:
            return ee
    raise ValueError(f"min_start_distance={config.min_start_distance} leaves no room for the start")


def sample_scene(rng: np.random.Generator, config: SceneConfig = SceneConfig()) -> Scene:
    """Draws the objects, their colours and shapes, the goals, the target, the start and the instruction."""
    if config.task == "side":
        positions = rng.uniform(-config.anchor_range, config.anchor_range, size=(1, 2))
        goals = positions + config.side_offset * np.array(list(SIDES.values()), dtype=np.float64)
    else:
        positions = _object_positions(rng, config)
        goals = positions
    ee = _start(rng, goals, config)
    n = len(positions)
    names = list(PALETTE)
    colours = tuple(names[i] for i in rng.permutation(len(names))[:n])
    shapes = tuple(SHAPES[i] for i in rng.integers(0, len(SHAPES), size=n))
    target = int(rng.integers(0, len(goals)))
    if config.task == "side":
        side = list(SIDES)[target]
        template = SIDE_TEMPLATES[int(rng.integers(0, len(SIDE_TEMPLATES)))]
        instruction = template.format(side=side, colour=colours[0], shape=shapes[0])
    else:
        side = None
        template = TEMPLATES[int(rng.integers(0, len(TEMPLATES)))]
        instruction = template.format(colour=colours[target], shape=shapes[target])
    return Scene(positions=positions, colours=colours, shapes=shapes, goals=goals.copy(), target=target,
                 ee_start=ee, instruction=instruction, side=side)


def all_instructions() -> list[str]:
    """Every instruction either task can produce (used to train the demo tokenizer)."""
    return ([t.format(colour=c, shape=s) for t in TEMPLATES for c in PALETTE for s in SHAPES]
            + [t.format(side=d, colour=c, shape=s) for t in SIDE_TEMPLATES for d in SIDES for c in PALETTE
               for s in SHAPES])
