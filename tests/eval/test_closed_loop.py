"""Batched closed-loop evaluation: Wilson intervals, lockstep batches equal one-by-one rollouts."""
import types

import numpy as np
import pytest

from shallow_pi_jax.eval.closed_loop import (
    episode_noise,
    evaluate,
    sim_to_robot_obs,
    wilson_interval,
)
from shallow_pi_jax.sim.env import ReachEnv, rollout

HORIZON, MODEL_DIM = 6, 8


def test_wilson_interval_textbook_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)


class FakePolicy:
    """Heads to the closest object seen in the state-free way a policy could: it 'sees' the
    instruction-independent centre pull plus noise. Deterministic given (obs, noise)."""

    def __init__(self):
        self.config = types.SimpleNamespace(action_horizon=HORIZON, action_dim=MODEL_DIM, depth=1)
        self.batch_sizes = []

    def input_transform(self, robot_obs):
        assert set(robot_obs) == {"observation/image", "observation/wrist_image", "observation/state", "prompt"}
        return {"state": np.asarray(robot_obs["observation/state"], np.float32),
                "bright": np.float32(robot_obs["observation/image"].mean() / 255)}

    def sample(self, batch, noise):
        self.batch_sizes.append(len(batch["state"]))
        pull = -3.0 * batch["state"][:, None, :] + 0.8 * noise[:, :, :2] + batch["bright"][:, None, None]
        return np.concatenate([pull, noise[:, :, 2:]], axis=-1)

    def output_transform(self, actions, raw_state=None):
        return np.asarray(actions)[..., :7]


def sequential_rollout(policy, seed, replan_every):
    queries = [0]

    def act(obs):
        inputs = policy.input_transform(sim_to_robot_obs(obs))
        batch = {k: np.asarray(v)[None] for k, v in inputs.items()}
        noise = episode_noise(seed, queries[0], (HORIZON, MODEL_DIM))[None]
        queries[0] += 1
        return policy.output_transform(policy.sample(batch, noise)[0])[:, :2]

    return rollout(ReachEnv(), act, seed=seed, replan_every=replan_every)


def test_lockstep_batches_match_one_by_one_rollouts_and_batch_size_is_fixed():
    seeds = list(range(500, 523))
    policy = FakePolicy()
    r = evaluate(policy, seeds, replan_every=3, num_envs=10)
    assert set(policy.batch_sizes) == {10}  # padded: one compiled shape
    ref = [sequential_rollout(FakePolicy(), s, 3) for s in seeds]
    got = r["per_episode"]
    assert [e["seed"] for e in got] == seeds
    assert [e["success"] for e in got] == [x["success"] for x in ref]
    assert [e["steps"] for e in got] == [x["steps"] for x in ref]
    assert [e["touched"] for e in got] == [x["touched"] for x in ref]
    # the fake policy is neither always right nor always wrong, so the comparison has teeth
    outcomes = {(e["success"], e["touched"] >= 0) for e in got}
    assert len(outcomes) >= 2, outcomes
    n = r["successes"]
    assert r["episodes"] == 23 and r["success_rate"] == n / 23 and r["ci95"] == list(wilson_interval(n, 23))
    assert r["wrong_object"] + r["timeouts"] + r["success_rate"] == pytest.approx(1.0)

    # another batch size gives the same episodes
    r2 = evaluate(FakePolicy(), seeds, replan_every=3, num_envs=4)
    assert r2["per_episode"] == got


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="seeds"):
        evaluate(FakePolicy(), [], replan_every=2)
    with pytest.raises(ValueError, match="seeds"):
        evaluate(FakePolicy(), [1, 1], replan_every=2)
    with pytest.raises(ValueError, match="replan_every"):
        evaluate(FakePolicy(), [1], replan_every=HORIZON + 1)
