"""ReachEnv: a closed-loop 2-D tabletop task a policy can only solve by reading image and instruction.

Each episode lays out a scene (scene.py): by default one object (a block or a ball, one of six
colours) and an instruction naming one of its four sides ("go left of the red block"); the spots
beside it are the goals. With `SceneConfig(task="object")`, several objects of distinct colours and
an instruction naming one of them; the objects are the goals. Actions are continuous velocities
(dx, dy) in [-1, 1] (clipped), scaled by `max_step` world units per step; the gripper is clipped to
the table. The gripper *touches* a goal when it stays within `touch_radius` of it for `hold_steps`
consecutive steps: touching the named goal is success, touching another one is failure, both end
the episode; otherwise it ends after `max_steps`. Staying is required so sweeping across the table
without looking does not work.

    env = ReachEnv(seed=0, image_size=64)
    obs = env.reset(seed=3)   # {"image", "wrist_image": uint8 [H, W, 3], "state": float32 [2], "instruction": str}
    obs, reward, done, info = env.step(np.array([0.5, -1.0]))   # info["success"]

`rollout(env, policy, seed, replan_every=k)` runs one episode with a policy that returns action
chunks, executing the first k actions of each chunk before querying it again.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from shallow_pi_jax.sim import render
from shallow_pi_jax.sim.scene import Scene, SceneConfig, sample_scene

STATE_DIM = 2  # end-effector (x, y)
ACTION_DIM = 2  # velocity (dx, dy) in units of max_step


@dataclasses.dataclass(frozen=True)
class ReachConfig:
    image_size: int = 64
    max_steps: int = 50
    max_step: float = 0.1  # world units moved by a unit action (the table is 2 units wide)
    touch_radius: float = 0.12
    hold_steps: int = 4
    wrist_zoom: float = 2.0
    scene: SceneConfig = SceneConfig()

    def __post_init__(self):
        if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 8:
            raise ValueError(f"image_size: expected an int >= 8, got {self.image_size!r}")
        if self.max_steps < 1 or self.hold_steps < 1:
            raise ValueError(f"max_steps/hold_steps: expected >= 1, got {self.max_steps}/{self.hold_steps}")
        if self.max_step <= 0 or self.touch_radius <= 0:
            raise ValueError(f"max_step/touch_radius: expected > 0, got {self.max_step}/{self.touch_radius}")


def _episode_rng(seed) -> np.random.Generator:
    # Ints and int sequences both go through SeedSequence, so seed 5 and (1, 0, 5) are unrelated streams.
    return np.random.default_rng(np.random.SeedSequence(seed))


class ReachEnv:
    """Headless reach task. Deterministic: the same reset seed gives the same episode."""

    action_dim = ACTION_DIM
    state_dim = STATE_DIM

    def __init__(self, seed: int = 0, image_size: int | None = None, config: ReachConfig | None = None,
                 render_images: bool = True):
        config = config or ReachConfig()
        # False leaves "image"/"wrist_image" out of observations: fast runs of state-only baselines.
        self.render_images = render_images
        if image_size is not None:
            config = dataclasses.replace(config, image_size=image_size)
        self.config = config
        self._seeds = np.random.default_rng(seed)  # draws episode seeds when reset() gets none
        self.scene: Scene | None = None
        self.ee = np.zeros(2)
        self.t = 0
        self.done = True
        self._near = np.zeros(0, dtype=np.int64)  # consecutive steps within touch_radius, per goal

    # -- privileged state (for the scripted expert and tests) --
    @property
    def target_position(self) -> np.ndarray:
        self._check_reset()
        return self.scene.target_position

    @property
    def max_steps(self) -> int:
        return self.config.max_steps

    def _check_reset(self):
        if self.scene is None:
            raise RuntimeError("call reset() before using the environment")

    def reset(self, seed: int | Sequence[int] | None = None) -> dict:
        if seed is None:
            seed = int(self._seeds.integers(0, 2**63 - 1))
        self.scene = sample_scene(_episode_rng(seed), self.config.scene)
        self.ee = self.scene.ee_start.copy()
        self.t = 0
        self.done = False
        self._near = np.zeros(len(self.scene.goals), dtype=np.int64)
        return self.observation()

    def observation(self) -> dict:
        self._check_reset()
        c = self.config
        obs = {"state": self.ee.astype(np.float32), "instruction": self.scene.instruction}
        if self.render_images:
            size = c.scene.object_size
            obs["image"] = render.render_main(self.scene, self.ee, c.image_size, object_size=size)
            obs["wrist_image"] = render.render_wrist(self.scene, self.ee, c.image_size, c.wrist_zoom, object_size=size)
        return obs

    def step(self, action) -> tuple[dict, float, bool, dict]:
        self._check_reset()
        if self.done:
            raise RuntimeError("episode is over: call reset()")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action: expected shape ({ACTION_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action: expected finite values, got {action}")
        c = self.config
        self.ee = np.clip(self.ee + c.max_step * np.clip(action, -1.0, 1.0), -1.0, 1.0)
        self.t += 1
        dist = np.linalg.norm(self.scene.goals - self.ee, axis=1)
        self._near = np.where(dist <= c.touch_radius, self._near + 1, 0)
        touched = np.flatnonzero(self._near >= c.hold_steps)
        # Goals are >= 2 * touch_radius apart by default, so at most one can be touched.
        touched_index = int(touched[np.argmin(dist[touched])]) if touched.size else -1
        success = touched_index == self.scene.target
        truncated = touched_index < 0 and self.t >= c.max_steps
        self.done = touched_index >= 0 or truncated
        info = {
            "success": bool(success),
            "touched": touched_index,
            "truncated": bool(truncated),
            "distance": float(dist[self.scene.target]),
            "steps": self.t,
        }
        return self.observation(), float(success), self.done, info


Policy = Callable[[dict], np.ndarray]


def rollout(env: ReachEnv, policy: Policy, seed=None, replan_every: int | None = None) -> dict:
    """Runs one episode; `policy(obs)` returns one action [A] or a chunk [T, A].

    With a chunk, the first `replan_every` actions (all of them when None) are executed before the
    policy is queried again. Returns {"success", "steps", "touched", "queries"}.
    """
    if replan_every is not None and replan_every < 1:
        raise ValueError(f"replan_every: expected >= 1 or None, got {replan_every}")
    obs = env.reset(seed)
    queries, info = 0, {"success": False, "touched": -1, "steps": 0}
    done = False
    while not done:
        chunk = np.asarray(policy(obs), dtype=np.float64)
        queries += 1
        if chunk.ndim == 1:
            chunk = chunk[None]
        if chunk.ndim != 2 or chunk.shape[1] != env.action_dim or chunk.shape[0] < 1:
            raise ValueError(f"policy output: expected [{env.action_dim}] or [T, {env.action_dim}], got {chunk.shape}")
        for action in chunk[:replan_every]:
            obs, _, done, info = env.step(action)
            if done:
                break
    return {"success": info["success"], "steps": info["steps"], "touched": info["touched"], "queries": queries}
