"""How the fields of an RLDS step or a LeRobot frame become openpi's inputs (cameras, state, actions, prompt).

A `Mapping` names RLDS step fields by their path below `steps/` ("observation/image"), and LeRobot
features by their key in meta/info.json ("image", "observation.images.top"); for LeRobot the prompt
"task" is the frame's task_index looked up in meta/tasks.jsonl (openpi's prompt_from_task). Built-in
mappings: "libero" (openvla / openpi LIBERO RLDS), "lerobot_libero" (openpi's LeRobot
physical-intelligence/libero, as its LiberoInputs reads it), "droid" (DROID RLDS, joint-position
actions, like openpi's DROID loader), "droid_velocity" (joint-velocity actions). Any other
Open-X-style dataset is declared in the config as a dict, e.g.

    mapping = {"cameras": {"base_0_rgb": "observation/image_0",
                           "left_wrist_0_rgb": "observation/wrist_image"},
               "state": ["observation/joint_pos", "observation/gripper"],   # concatenated
               "actions": "action",
               "prompt": "language_instruction"}

A camera given as a list of paths picks one of them at random per episode (DROID's two exterior
cameras); a prompt given as a list picks one of the non-empty instructions per episode.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping as _AbcMapping
from typing import Any

# openpi's camera names, in the order the model consumes them.
OPENPI_CAMERAS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclasses.dataclass(frozen=True)
class Mapping:
    # (openpi camera name, (rlds path, alternative paths...)) pairs.
    cameras: tuple[tuple[str, tuple[str, ...]], ...]
    # Step fields concatenated (in order) into the state / action vector.
    state: tuple[str, ...]
    actions: tuple[str, ...]
    # Alternative instruction fields; empty tuple → the config's default_prompt.
    prompt: tuple[str, ...] = ("language_instruction",)
    # Action dims the robot consumes; inference outputs are sliced to it (None → norm stats' length).
    action_dim: int | None = None
    # Drop frames whose first half of the action chunk does not move (openpi's DROID idle filter).
    idle_threshold: float | None = None
    # "position": movement relative to the chunk's first action; "velocity": absolute value.
    idle_mode: str = "position"

    def __post_init__(self):
        for cam, paths in self.cameras:
            if not paths:
                raise ValueError(f"mapping.cameras['{cam}']: expected at least one rlds path, got none")
        if not self.state:
            raise ValueError("mapping.state: expected at least one rlds path, got none")
        if not self.actions:
            raise ValueError("mapping.actions: expected at least one rlds path, got none")
        if self.idle_mode not in ("position", "velocity"):
            raise ValueError(f"mapping.idle_mode: expected 'position' or 'velocity', got {self.idle_mode!r}")

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(cam for cam, _ in self.cameras)

    def all_paths(self) -> dict[str, str]:
        """Every rlds path the mapping reads, with the role it plays (for error messages)."""
        out = {}
        for cam, paths in self.cameras:
            for p in paths:
                out[p] = f"cameras.{cam}"
        for p in self.state:
            out[p] = "state"
        for p in self.actions:
            out[p] = "actions"
        for p in self.prompt:
            out[p] = "prompt"
        return out

    @classmethod
    def from_dict(cls, d: _AbcMapping[str, Any]) -> Mapping:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"mapping: unknown field '{key}' (expected one of {sorted(known)})")
        for key in ("cameras", "state", "actions"):
            if key not in d:
                raise ValueError(f"mapping: missing field '{key}'")
        cams = d["cameras"]
        if isinstance(cams, _AbcMapping):
            cams = cams.items()
        d["cameras"] = tuple((str(cam), _as_paths(paths)) for cam, paths in cams)
        for key in ("state", "actions", "prompt"):
            if key in d:
                d[key] = _as_paths(d[key])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["cameras"] = {cam: list(paths) for cam, paths in self.cameras}
        for key in ("state", "actions", "prompt"):
            d[key] = list(d[key])
        return d


def _as_paths(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


LIBERO = Mapping(
    cameras=(("base_0_rgb", ("observation/image",)), ("left_wrist_0_rgb", ("observation/wrist_image",))),
    state=("observation/state",),
    actions=("action",),
    prompt=("language_instruction",),
    action_dim=7,
)

_DROID_CAMERAS = (
    ("base_0_rgb", ("observation/exterior_image_1_left", "observation/exterior_image_2_left")),
    ("left_wrist_0_rgb", ("observation/wrist_image_left",)),
)
_DROID_PROMPTS = ("language_instruction", "language_instruction_2", "language_instruction_3")
_DROID_STATE = ("observation/joint_position", "observation/gripper_position")

DROID = Mapping(
    cameras=_DROID_CAMERAS,
    state=_DROID_STATE,
    actions=("action_dict/joint_position", "action_dict/gripper_position"),
    prompt=_DROID_PROMPTS,
    action_dim=8,
    idle_threshold=1e-3,
    idle_mode="position",
)

DROID_VELOCITY = dataclasses.replace(
    DROID, actions=("action_dict/joint_velocity", "action_dict/gripper_position"), idle_mode="velocity"
)

# openpi's LIBERO conversion (examples/libero/convert_libero_data_to_lerobot.py) names the features
# image, wrist_image, state [8], actions [7]; the instruction is the frame's task.
LEROBOT_LIBERO = Mapping(
    cameras=(("base_0_rgb", ("image",)), ("left_wrist_0_rgb", ("wrist_image",))),
    state=("state",),
    actions=("actions",),
    prompt=("task",),
    action_dim=7,
)

BUILTIN = {"libero": LIBERO, "lerobot_libero": LEROBOT_LIBERO, "droid": DROID, "droid_velocity": DROID_VELOCITY}


def resolve_mapping(mapping) -> Mapping:
    """A built-in name, a dict / ConfigDict declared in a config, or a Mapping."""
    if isinstance(mapping, Mapping):
        return mapping
    if isinstance(mapping, str):
        if mapping not in BUILTIN:
            raise ValueError(f"mapping: unknown name {mapping!r} (expected one of {sorted(BUILTIN)} "
                             "or a dict with cameras/state/actions/prompt)")
        return BUILTIN[mapping]
    if hasattr(mapping, "to_dict"):  # ml_collections.ConfigDict
        mapping = mapping.to_dict()
    if isinstance(mapping, _AbcMapping):
        return Mapping.from_dict(mapping)
    raise ValueError(f"mapping: expected a name, dict or Mapping, got {type(mapping).__name__}")
