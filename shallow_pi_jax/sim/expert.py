"""Scripted expert for ReachEnv, reading the privileged target position.

A saturated proportional controller: a straight line at full speed towards the named goal,
then a geometric slow-down (the gap halves each step with gain 0.5) so it settles on the goal
and holds.
Gaussian noise on the commanded velocity makes demonstrations diverse; what is recorded is the
action actually executed (after clipping to [-1, 1]).
"""
from __future__ import annotations

import numpy as np

from shallow_pi_jax.sim.env import ReachEnv, _episode_rng


def expert_action(env: ReachEnv, rng: np.random.Generator | None = None, noise_std: float = 0.0,
                  gain: float = 0.5) -> np.ndarray:
    """The expert's action [2] in [-1, 1] for the env's current state."""
    command = gain * (env.target_position - env.ee) / env.config.max_step
    speed = np.linalg.norm(command)
    if speed > 1.0:  # saturate the speed, not each axis, so the path stays a straight line
        command = command / speed
    if noise_std > 0:
        if rng is None:
            raise ValueError("rng: a numpy Generator is required when noise_std > 0")
        command = command + rng.normal(0.0, noise_std, size=command.shape)
    return np.clip(command, -1.0, 1.0).astype(np.float32)


def expert_episode(env: ReachEnv, seed, noise_std: float = 0.1) -> dict:
    """Runs the expert for one episode and records it.

    Returns numpy arrays over the T steps: "image", "wrist_image" uint8 [T, H, W, 3], "state"
    float32 [T, 2] (the observation each action was taken from), "action" float32 [T, 2], plus
    "instruction" (str) and "success" (bool). Noise is drawn from a stream derived from `seed`,
    separate from the one that lays out the scene.
    """
    seed_list = list(np.atleast_1d(np.asarray(seed, dtype=np.int64)).tolist())
    rng = _episode_rng([*seed_list, 0xE])
    obs = env.reset(seed)
    frames = {"image": [], "wrist_image": [], "state": [], "action": []}
    done, info = False, {"success": False}
    while not done:
        action = expert_action(env, rng, noise_std)
        for key in ("image", "wrist_image", "state"):
            frames[key].append(obs[key])
        frames["action"].append(action)
        obs, _, done, info = env.step(action)
    episode = {k: np.stack(v) for k, v in frames.items()}
    episode["instruction"] = env.scene.instruction
    episode["success"] = bool(info["success"])
    return episode
