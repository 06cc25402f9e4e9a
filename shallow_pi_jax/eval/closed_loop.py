"""Batched closed-loop evaluation of a policy on ReachEnv, with Wilson confidence intervals.

Many episodes step in lockstep: one `Policy.sample` call per replanning step serves every running
episode at once (the batch is padded to a fixed size, so the sampler compiles once).

    from shallow_pi_jax.serve.policy import load_policy
    from shallow_pi_jax.eval.closed_loop import evaluate
    policy = load_policy("runs/l6/student", env="demo")
    r = evaluate(policy, seeds=range(100_000, 100_200), replan_every=5, num_envs=50)
    r["success_rate"], r["ci95"]          # e.g. 0.62, (0.55, 0.68)

Evaluation seeds are plain ints: the demo dataset's episodes use tuple seeds, so they never repeat.
The flow noise of each query is drawn from (episode seed, query index), so an episode's outcome does
not depend on which other episodes share its batch.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

import jax
import numpy as np

from shallow_pi_jax.sim.env import ReachConfig, ReachEnv


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default); (0, 1) for n = 0."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: expected 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The bounds are exactly 0 / 1 at p = 0 / 1; pin them so float rounding does not show 0.9999999.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def sim_to_robot_obs(obs: dict) -> dict:
    """ReachEnv observation → the LIBERO-style client dict the "demo" preset's transforms read."""
    return {"observation/image": obs["image"], "observation/wrist_image": obs["wrist_image"],
            "observation/state": obs["state"], "prompt": obs["instruction"]}


def episode_noise(seed: int, query: int, shape: Sequence[int]) -> np.ndarray:
    return np.random.default_rng((0xE7A1, int(seed), int(query))).standard_normal(shape).astype(np.float32)


def evaluate(policy, seeds: Iterable[int], *, replan_every: int = 5, num_envs: int = 50,
             env_config: ReachConfig | None = None, progress=None) -> dict:
    """Runs one episode per seed with `policy` (a serve.policy.Policy with its transforms).

    Returns {"episodes", "successes", "success_rate", "ci95", "wrong_object", "timeouts",
    "mean_steps", "queries", "seconds", "per_episode": [{"seed", "success", "touched", "steps"}]}.
    `progress(done, total)` is called after each finished batch of episodes.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: expected at least one evaluation seed, got none")
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds: expected distinct evaluation seeds, got duplicates")
    if replan_every < 1 or num_envs < 1:
        raise ValueError(f"replan_every/num_envs: expected >= 1, got {replan_every}/{num_envs}")
    if policy.input_transform is None or policy.output_transform is None:
        raise ValueError("policy: expected a Policy with input and output transforms (load_policy(..., env='demo'))")
    cfg = policy.config
    horizon = cfg.action_horizon
    if replan_every > horizon:
        raise ValueError(f"replan_every: expected <= the action horizon {horizon}, got {replan_every}")
    noise_shape = (horizon, cfg.action_dim)
    start = time.monotonic()
    per_episode, queries = [], 0
    for b0 in range(0, len(seeds), num_envs):
        batch_seeds = seeds[b0:b0 + num_envs]
        results, q = _run_batch(policy, batch_seeds, num_envs, replan_every, env_config, noise_shape)
        per_episode += results
        queries += q
        if progress is not None:
            progress(len(per_episode), len(seeds))
    n = len(per_episode)
    succ = sum(r["success"] for r in per_episode)
    return {
        "episodes": n, "successes": succ, "success_rate": succ / n, "ci95": list(wilson_interval(succ, n)),
        "wrong_object": sum(r["touched"] >= 0 and not r["success"] for r in per_episode) / n,
        "timeouts": sum(r["touched"] < 0 for r in per_episode) / n,
        "mean_steps": float(np.mean([r["steps"] for r in per_episode])),
        "queries": queries, "seconds": time.monotonic() - start, "replan_every": replan_every,
        "per_episode": per_episode,
    }


def _run_batch(policy, seeds, batch_size, replan_every, env_config, noise_shape):
    envs = [ReachEnv(config=env_config) for _ in seeds]
    obs = [env.reset(seed) for env, seed in zip(envs, seeds)]
    done = [False] * len(envs)
    info = [{"success": False, "touched": -1, "steps": 0} for _ in envs]
    query, robot_dim = 0, envs[0].action_dim
    while not all(done):
        live = [i for i, d in enumerate(done) if not d]
        inputs = [policy.input_transform(sim_to_robot_obs(obs[i])) for i in live]
        noise = [episode_noise(seeds[i], query, noise_shape) for i in live]
        # Pad with copies of the first live episode: a fixed batch shape means one compilation.
        pad = batch_size - len(live)
        inputs += [inputs[0]] * pad
        noise += [noise[0]] * pad
        batch = jax.tree.map(lambda *xs: np.stack(xs), *inputs)
        actions = policy.sample(batch, np.stack(noise))[: len(live)]
        for i, model_actions in zip(live, actions):
            chunk = policy.output_transform(model_actions)[:, :robot_dim]
            for a in chunk[:replan_every]:
                obs[i], _, done[i], info[i] = envs[i].step(a)
                if done[i]:
                    break
        query += 1
    results = [{"seed": s, "success": bool(x["success"]), "touched": int(x["touched"]), "steps": int(x["steps"])}
               for s, x in zip(seeds, info)]
    return results, query
