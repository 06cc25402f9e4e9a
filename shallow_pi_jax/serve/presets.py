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
"""
from __future__ import annotations

import dataclasses

from shallow_pi_jax.data.mappings import Mapping, resolve_mapping

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
    # openpi's LIBERO π0.5 checkpoint was trained without the state in the prompt; None = the π0.5 default.
    state_in_prompt: bool | None = None
    delta_action_mask: tuple[bool, ...] | None = None
    # Sub-folder of an openpi checkpoint's assets/ that holds this robot's norm_stats.json.
    asset_id: str | None = None

    def horizon(self, pi05: bool) -> int:
        return self.horizon_pi05 if pi05 else self.horizon_pi0


PRESETS = {
    "libero": EnvPreset("libero", resolve_mapping("libero"), horizon_pi0=50, horizon_pi05=10,
                        state_in_prompt=False, asset_id="physical-intelligence/libero"),
    "droid": EnvPreset("droid", resolve_mapping("droid"), horizon_pi0=10, horizon_pi05=15, asset_id="droid"),
    # openpi's ALOHA policies predict joint deltas for both arms (grippers absolute).
    "aloha": EnvPreset("aloha", ALOHA, horizon_pi0=50, horizon_pi05=50,
                       delta_action_mask=(True,) * 6 + (False,) + (True,) * 6 + (False,), asset_id="trossen"),
    "demo": EnvPreset("demo", resolve_mapping("libero"), horizon_pi0=10, horizon_pi05=10),
}


def get_preset(name: str) -> EnvPreset:
    if name not in PRESETS:
        raise ValueError(f"env: unknown preset {name!r} (expected one of {sorted(PRESETS)})")
    return PRESETS[name]
