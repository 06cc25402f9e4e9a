"""Robot presets for serving: which observation keys a robot's openpi client sends and what the
policy returns to it.

    preset = PRESETS["libero"]
    preset.mapping              # openpi client keys → model cameras / state (data.mappings.Mapping)
    preset.horizon(pi05=True)   # default action chunk when the checkpoint does not record one

The keys are those of openpi's example clients: LIBERO sends `observation/image`,
`observation/wrist_image`, `observation/state`, `prompt`; DROID sends
`observation/exterior_image_1_left`, `observation/wrist_image_left`, `observation/joint_position`,
`observation/gripper_position`, `prompt`; ALOHA sends `images/{cam_high, cam_left_wrist,
cam_right_wrist}` (CHW uint8), `state` [14], `prompt`. `demo` is the bundled ReachEnv simulator
(LIBERO layout, 2-D state and actions).

`preset.request_spec(...)` is what one request must hold, checked before any transform runs
(`spec.check(obs)` raises a ValueError naming the field, what was expected and what came):

- every camera of the mapping: a uint8 or float image, [H, W, 3] or [3, H, W] (as openpi takes);
  H, W >= 1 and the long side at most image_size × the short one (else resizing leaves nothing);
  float images finite and within [0, 1] (openpi turns them into uint8 as 255 × x, so [0, 255] or
  [-1, 1] floats would wrap around silently), FLOAT_IMAGE_SLACK allowed for rounding;
- every state key: a finite real vector of the preset's length (the norm stats' for `demo`);
  a length-1 part may be a scalar;
- `prompt` (or the mapping's prompt keys), when present: a str of at most MAX_PROMPT_CHARS.
Other keys are ignored, as openpi does.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping as _AbcMapping

import numpy as np

from shallow_pi_jax import trees
from shallow_pi_jax.checkpoint import policy_record
from shallow_pi_jax.data.mappings import Mapping, resolve_mapping
from shallow_pi_jax.models.config import ModelConfig

MAX_PROMPT_CHARS = 2000  # the tokenizer keeps at most max_token_len (<= 200) tokens anyway
FLOAT_IMAGE_SLACK = 1e-3  # 255 × (1 + 1e-3) still truncates to 255

ALOHA = Mapping.from_dict({
    "cameras": {"base_0_rgb": "images/cam_high", "left_wrist_0_rgb": "images/cam_left_wrist",
                "right_wrist_0_rgb": "images/cam_right_wrist"},
    "state": ["state"], "actions": ["actions"], "prompt": ["prompt"], "action_dim": 14,
})


@dataclasses.dataclass(frozen=True)
class EnvPreset:
    name: str
    mapping: Mapping
    horizon_pi0: int
    horizon_pi05: int
    # For a checkpoint without policy_record.json (openpi's): the openpi config whose record it is taken to
    # have, per architecture; without one, state_in_prompt (None: the π0.5 default) and delta_action_mask.
    openpi_pi0: str | None = None
    openpi_pi05: str | None = None
    state_in_prompt: bool | None = None
    delta_action_mask: tuple[bool, ...] | None = None
    # Sub-folder of an openpi checkpoint's assets/ that holds this robot's norm_stats.json.
    asset_id: str | None = None
    # Length of each state key the robot's client sends (in mapping.state order) and of the action
    # vector it consumes; None: whatever the checkpoint's norm stats hold (the demo simulator).
    state_dims: tuple[int, ...] | None = None
    action_dim: int | None = None

    def horizon(self, pi05: bool) -> int:
        return self.horizon_pi05 if pi05 else self.horizon_pi0

    def default_record(self, cfg: ModelConfig) -> policy_record.PolicyRecord:
        """The record of a checkpoint that has none, served for this robot: the preset's openpi config for
        the model's architecture, else the preset's own settings."""
        name = self.openpi_pi05 if cfg.pi05 else self.openpi_pi0
        if name is not None:
            return policy_record.openpi(name)
        return policy_record.PolicyRecord(
            pi05=cfg.pi05, cameras=tuple(cfg.image_keys),
            masked_cameras=tuple(c for c in cfg.image_keys if c not in self.mapping.camera_names),
            state_in_prompt=cfg.pi05 if self.state_in_prompt is None else self.state_in_prompt,
            max_token_len=cfg.max_token_len, action_horizon=cfg.action_horizon, action_dim=cfg.action_dim,
            robot_action_dim=self.action_dim, delta_action_mask=self.delta_action_mask, quantile_norm=cfg.pi05,
            asset_id=self.asset_id, source=f"env preset {self.name}")

    def check_record(self, record: policy_record.PolicyRecord, where: str) -> None:
        """This robot must give the cameras the record has unmasked and take its action dims."""
        sent = tuple(c for c in record.cameras if c in self.mapping.camera_names)
        if set(sent) != set(record.present_cameras):
            raise ValueError(f"cameras: {where} has the robot give {list(record.present_cameras)} "
                             f"(masked: {list(record.masked_cameras)}), --env {self.name} sends {list(sent)}")
        if None not in (record.robot_action_dim, self.action_dim) and record.robot_action_dim != self.action_dim:
            raise ValueError(f"robot_action_dim: {where} says {record.robot_action_dim}, --env {self.name} "
                             f"takes {self.action_dim}")
        for name in ("state_in_prompt", "delta_action_mask"):
            mine = getattr(self, name)
            if mine is not None and mine != getattr(record, name):
                raise ValueError(f"{name}: {where} says {getattr(record, name)!r}, --env {self.name} says {mine!r}")

    def request_spec(self, *, image_size: int, stats_state_dim: int | None = None) -> RequestSpec:
        """What one request must hold; `stats_state_dim` stands in for state_dims when the preset has none."""
        dims = self.state_dims
        if dims is None:
            if stats_state_dim is None or len(self.mapping.state) != 1:
                raise ValueError(f"env {self.name}: the state length is not known; pass the norm stats' state dim")
            dims = (stats_state_dim,)
        return RequestSpec(cameras=tuple(paths for _, paths in self.mapping.cameras),
                           state=tuple(zip(self.mapping.state, dims)),
                           prompts=("prompt", *self.mapping.prompt), image_size=image_size)


PRESETS = {
    # LIBERO: end-effector position (3), axis-angle (3), gripper joints (2) -> 6-DoF delta + gripper.
    "libero": EnvPreset("libero", resolve_mapping("libero"), horizon_pi0=50, horizon_pi05=10,
                        openpi_pi0="pi0_libero", openpi_pi05="pi05_libero", asset_id="physical-intelligence/libero",
                        state_dims=(8,), action_dim=7),
    # DROID: 7 joint positions + 1 gripper position -> 7 joint targets + gripper.
    "droid": EnvPreset("droid", resolve_mapping("droid"), horizon_pi0=10, horizon_pi05=15, asset_id="droid",
                       openpi_pi0="pi0_droid", openpi_pi05="pi05_droid",
                       state_dims=(7, 1), action_dim=8),
    # openpi's ALOHA policies predict joint deltas for both arms (grippers absolute).
    "aloha": EnvPreset("aloha", ALOHA, horizon_pi0=50, horizon_pi05=50,
                       delta_action_mask=(True,) * 6 + (False,) + (True,) * 6 + (False,), asset_id="trossen",
                       state_dims=(14,), action_dim=14),
    "demo": EnvPreset("demo", resolve_mapping("libero"), horizon_pi0=10, horizon_pi05=10),
}


def get_preset(name: str) -> EnvPreset:
    if name not in PRESETS:
        raise ValueError(f"env: unknown preset {name!r} (expected one of {sorted(PRESETS)})")
    return PRESETS[name]


# ----------------------------------------------------------------------------- request checks

def _find(flat: dict, paths) -> tuple[str | None, object]:
    """The first of `paths` present (bare or under observation/), as the input transform looks them up."""
    for path in paths:
        for key in (path, f"observation/{path}"):
            if flat.get(key) is not None:
                return key, flat[key]
    return None, None


def _keys(flat: dict, n: int = 12) -> str:
    keys = sorted(str(k)[:60] for k in flat)
    return str(keys[:n])[:-1] + (f", ... ({len(keys)} keys)]" if len(keys) > n else "]")


def _as_array(value, field: str, expected: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    # Plain numbers and lists (a python caller, or msgpack lists) are fine; strings, dicts, bytes are not.
    if isinstance(value, (bool, int, float, complex, list, tuple, np.generic)) or hasattr(value, "__array__"):
        try:
            return np.asarray(value)
        except (ValueError, TypeError, OverflowError):
            pass
    raise ValueError(f"{field}: expected {expected}, got {type(value).__name__}")


def check_image(value, field: str, image_size: int) -> None:
    expected = "a uint8 or float image [H, W, 3] or [3, H, W]"
    a = _as_array(value, field, expected)
    if a.dtype != np.uint8 and a.dtype.kind != "f" or a.ndim != 3 or 3 not in (a.shape[0], a.shape[-1]):
        raise ValueError(f"{field}: expected {expected}, got shape {a.shape} {a.dtype}")
    h, w = a.shape[:2] if a.shape[-1] == 3 else a.shape[1:]
    if min(h, w) < 1:
        raise ValueError(f"{field}: expected an image of at least 1x1 pixels, got shape {a.shape}")
    if max(h, w) > min(h, w) * image_size:  # the short side would be resized to 0 pixels
        raise ValueError(f"{field}: expected an image at most {image_size}:1 elongated (it is resized to "
                         f"{image_size}x{image_size}), got shape {a.shape}")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError(f"{field}: expected finite pixel values, got {int(np.sum(~np.isfinite(a)))} NaN or inf "
                             f"in shape {a.shape} {a.dtype}")
        lo, hi = float(a.min()), float(a.max())
        if lo < -FLOAT_IMAGE_SLACK or hi > 1 + FLOAT_IMAGE_SLACK:
            raise ValueError(f"{field}: expected a float image in [0, 1] (send uint8 for 0..255), "
                             f"got values in [{lo:.4g}, {hi:.4g}]")


def check_state(value, field: str, dim: int) -> None:
    expected = f"a finite real vector of length {dim}"
    a = _as_array(value, field, expected)
    if a.dtype.kind not in "iuf" or not (a.shape == (dim,) or dim == 1 and a.shape == ()):
        raise ValueError(f"{field}: expected {expected}, got shape {a.shape} {a.dtype}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf here: the model runs in float32
        bad = np.flatnonzero(~np.isfinite(a.astype(np.float32)))
    if bad.size:
        raise ValueError(f"{field}: expected {expected}, got NaN, inf or beyond float32 at index {bad[:8].tolist()}")


def check_prompt(value, field: str, max_chars: int = MAX_PROMPT_CHARS) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{field}: expected a str, got {type(value).__name__}")
    if len(value) > max_chars:
        raise ValueError(f"{field}: expected at most {max_chars} characters, got {len(value)}")


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    """The fields one robot observation must carry (see the module docstring for the rules)."""

    cameras: tuple[tuple[str, ...], ...]  # per camera, the keys it may come under
    state: tuple[tuple[str, int], ...]  # (key, length), concatenated in this order
    prompts: tuple[str, ...]
    image_size: int
    max_prompt_chars: int = MAX_PROMPT_CHARS

    def check(self, obs) -> None:
        if not isinstance(obs, _AbcMapping):
            raise ValueError(f"observation: expected a dict, got {type(obs).__name__}")
        flat = trees.flatten(obs, "/")
        for paths in self.cameras:
            key, value = _find(flat, paths)
            if key is None:
                raise ValueError(f"{paths[0]}: missing (expected a uint8 or float image); got keys {_keys(flat)}")
            check_image(value, key, self.image_size)
        for path, dim in self.state:
            key, value = _find(flat, (path,))
            if key is None:
                raise ValueError(f"{path}: missing (expected a real vector of length {dim}); got keys {_keys(flat)}")
            check_state(value, key, dim)
        for path in self.prompts:
            key, value = _find(flat, (path,))
            if key is not None:
                check_prompt(value, key, self.max_prompt_chars)
