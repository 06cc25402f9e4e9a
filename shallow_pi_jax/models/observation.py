"""The model's input contract (openpi's Observation fields, as a plain dict) and its checks.

    {"images": {camera: float32 [B, H, W, 3] in [-1, 1]}, "image_masks": {camera: bool [B]},
     "state": float32 [B, action_dim], "tokenized_prompt": int32 [B, max_token_len],
     "tokenized_prompt_mask": bool [B, max_token_len]}

Training batches add "actions": float32 [B, action_horizon, action_dim].
"""
from __future__ import annotations

from collections.abc import Mapping

from shallow_pi_jax.models.config import ModelConfig

OBS_KEYS = ("images", "image_masks", "state", "tokenized_prompt", "tokenized_prompt_mask")


def _shape(x):
    return tuple(getattr(x, "shape", ()))


def validate_observation(cfg: ModelConfig, obs: Mapping, actions=None) -> int:
    """Raise a ValueError naming the field, expected and actual value; return the batch size."""
    for key in OBS_KEYS:
        if key not in obs:
            raise ValueError(f"observation is missing '{key}' (expected keys {OBS_KEYS})")
    b = _shape(obs["state"])[0] if _shape(obs["state"]) else None
    h, w = cfg.image_size
    for cam in cfg.image_keys:
        if cam not in obs["images"]:
            raise ValueError(f"observation.images is missing camera '{cam}' (expected {cfg.image_keys}, "
                             f"got {tuple(obs['images'])})")
        if cam not in obs["image_masks"]:
            raise ValueError(f"observation.image_masks is missing camera '{cam}'")
        want = (b, h, w, 3)
        if _shape(obs["images"][cam]) != want:
            raise ValueError(f"observation.images['{cam}']: expected shape {want}, got {_shape(obs['images'][cam])}")
        if _shape(obs["image_masks"][cam]) != (b,):
            raise ValueError(f"observation.image_masks['{cam}']: expected shape {(b,)}, "
                             f"got {_shape(obs['image_masks'][cam])}")
    if _shape(obs["state"]) != (b, cfg.action_dim):
        raise ValueError(f"observation.state: expected shape {(b, cfg.action_dim)}, got {_shape(obs['state'])}")
    for key in ("tokenized_prompt", "tokenized_prompt_mask"):
        if _shape(obs[key]) != (b, cfg.max_token_len):
            raise ValueError(f"observation.{key}: expected shape {(b, cfg.max_token_len)}, got {_shape(obs[key])}")
    if actions is not None:
        want = (b, cfg.action_horizon, cfg.action_dim)
        if _shape(actions) != want:
            raise ValueError(f"actions: expected shape {want}, got {_shape(actions)}")
    return b


def dummy_observation(cfg: ModelConfig, batch_size: int = 1, with_actions: bool = False) -> dict:
    """An all-valid zero observation of the right shapes (for init, eval_shape and compilation)."""
    import numpy as np

    h, w = cfg.image_size
    obs = {
        "images": {cam: np.zeros((batch_size, h, w, 3), np.float32) for cam in cfg.image_keys},
        "image_masks": {cam: np.ones((batch_size,), bool) for cam in cfg.image_keys},
        "state": np.zeros((batch_size, cfg.action_dim), np.float32),
        "tokenized_prompt": np.zeros((batch_size, cfg.max_token_len), np.int32),
        "tokenized_prompt_mask": np.ones((batch_size, cfg.max_token_len), bool),
    }
    if with_actions:
        obs["actions"] = np.zeros((batch_size, cfg.action_horizon, cfg.action_dim), np.float32)
    return obs
