"""Closed-loop simulated reach task, its scripted expert and the demo dataset built from it.

    from shallow_pi_jax.sim import ReachEnv, expert_action, rollout
    env = ReachEnv(seed=0, image_size=64)
    obs = env.reset(seed=0)
    obs, reward, done, info = env.step(expert_action(env))

See docs/sim.md; `python -m shallow_pi_jax.make_demo_dataset --help` writes the demo RLDS dataset.
"""
from shallow_pi_jax.sim.env import ACTION_DIM, STATE_DIM, ReachConfig, ReachEnv, rollout
from shallow_pi_jax.sim.expert import expert_action, expert_episode
from shallow_pi_jax.sim.scene import SceneConfig

__all__ = ["ACTION_DIM", "STATE_DIM", "ReachConfig", "ReachEnv", "SceneConfig", "expert_action",
           "expert_episode", "rollout"]
