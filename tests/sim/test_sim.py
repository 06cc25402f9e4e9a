"""ReachEnv: dynamics, success check, rendering, the scripted expert and the baselines that must fail."""
import dataclasses
import time

import numpy as np
import pytest

from shallow_pi_jax.sim import render
from shallow_pi_jax.sim.env import ReachConfig, ReachEnv, rollout
from shallow_pi_jax.sim.expert import expert_action, expert_episode
from shallow_pi_jax.sim.scene import PALETTE, SIDES, SceneConfig

OBJECT_TASK = ReachConfig(scene=SceneConfig(task="object"))

N_EPISODES = 300  # per baseline; rates below are fixed by the seeds, bounds leave room for other seeds


def _place(env, ee):
    env.ee = np.asarray(ee, dtype=np.float64)


def test_reset_is_deterministic_and_seeds_differ():
    a, b = ReachEnv(seed=0), ReachEnv(seed=123)
    oa, ob = a.reset(7), b.reset(7)
    for key in ("image", "wrist_image", "state"):
        np.testing.assert_array_equal(oa[key], ob[key])
    assert oa["instruction"] == ob["instruction"]
    oc = a.reset(8)
    assert not np.array_equal(oa["image"], oc["image"])
    # Without a seed, episodes come from the constructor's seed: reproducible, and not all alike.
    x, y = ReachEnv(seed=5), ReachEnv(seed=5)
    firsts = [x.reset()["state"] for _ in range(3)]
    for s in firsts:
        np.testing.assert_array_equal(s, y.reset()["state"])
    assert not np.array_equal(firsts[0], firsts[1])
    blind = ReachEnv(seed=0, render_images=False).reset(7)
    assert set(blind) == {"state", "instruction"}
    np.testing.assert_array_equal(blind["state"], oa["state"])


@pytest.mark.parametrize("size", [32, 64, 96])
def test_observation_format(size):
    env = ReachEnv(seed=0, image_size=size)
    obs = env.reset(3)
    assert obs["image"].shape == (size, size, 3) and obs["image"].dtype == np.uint8
    assert obs["wrist_image"].shape == (size, size, 3) and obs["wrist_image"].dtype == np.uint8
    assert obs["state"].shape == (2,) and obs["state"].dtype == np.float32
    np.testing.assert_array_equal(obs["state"], env.ee.astype(np.float32))
    scene = env.scene
    assert obs["instruction"].endswith(f"{scene.side} the {scene.colours[0]} {scene.shapes[0]}")
    env = ReachEnv(seed=0, image_size=size, config=OBJECT_TASK)
    obs = env.reset(3)
    scene = env.scene
    assert f"{scene.colours[scene.target]} {scene.shapes[scene.target]}" in obs["instruction"]
    assert len(set(scene.colours)) == len(scene.colours)  # the colour alone names the target


def test_side_task_layout():
    cfg = SceneConfig()
    env = ReachEnv(seed=0, render_images=False)
    offsets = cfg.side_offset * np.array(list(SIDES.values()))
    for seed in range(200):
        env.reset(seed)
        scene = env.scene
        assert scene.positions.shape == (1, 2) and np.all(np.abs(scene.positions) <= cfg.anchor_range)
        np.testing.assert_allclose(scene.goals, scene.positions + offsets, atol=1e-12)
        assert np.all(np.abs(scene.goals) <= 1.0)  # every goal is reachable on the table
        assert np.linalg.norm(scene.goals - env.ee, axis=1).min() >= cfg.min_start_distance
        assert scene.side == list(SIDES)[scene.target] and f" {scene.side} the " in env.observation()["instruction"]
    gaps = np.linalg.norm(offsets[:, None] - offsets[None], axis=-1)[np.triu_indices(4, 1)]
    assert gaps.min() >= 2 * env.config.touch_radius  # at most one goal can be touched at a time
    counts = np.bincount([(env.reset(s), env.scene.target)[1] for s in range(400)], minlength=4)
    assert counts.min() > 70  # every side gets named, so "always go left" cannot work
    with pytest.raises(ValueError, match="anchor_range"):
        SceneConfig(anchor_range=0.7, side_offset=0.4)
    with pytest.raises(ValueError, match="task"):
        SceneConfig(task="push")


def test_object_task_layout_constraints():
    cfg = OBJECT_TASK.scene
    env = ReachEnv(seed=0, config=OBJECT_TASK)
    for seed in range(200):
        env.reset(seed)
        p = env.scene.positions
        assert np.all(np.abs(p) <= cfg.object_range)
        gaps = np.linalg.norm(p[:, None] - p[None], axis=-1)[np.triu_indices(len(p), 1)]
        assert gaps.min() >= cfg.min_object_separation
        assert np.linalg.norm(p - env.ee, axis=1).min() >= cfg.min_start_distance
        np.testing.assert_array_equal(env.scene.goals, p)
    counts = np.bincount([(env.reset(s), env.scene.target)[1] for s in range(300)], minlength=3)
    assert counts.min() > 60  # every slot gets named, so "always go to object 0" cannot work


def test_dynamics_scale_clip_and_bounds():
    env = ReachEnv(seed=0)
    env.reset(0)
    _place(env, (0.0, 0.0))
    env.scene = dataclasses.replace(env.scene, positions=np.array([[0.9, 0.9], [-0.9, 0.9], [0.9, -0.9]]))
    obs, reward, done, info = env.step(np.array([0.5, -0.25]))
    np.testing.assert_allclose(obs["state"], [0.05, -0.025], atol=1e-7)
    assert (reward, done, info["steps"]) == (0.0, False, 1)
    obs, *_ = env.step(np.array([10.0, -3.0]))  # clipped to (1, -1): one max_step per axis
    np.testing.assert_allclose(obs["state"], [0.15, -0.125], atol=1e-7)
    for _ in range(15):  # push into the wall between objects: the gripper stays on the table
        obs, _, done, _ = env.step(np.array([-1.0, 0.0]))
    np.testing.assert_allclose(obs["state"], [-1.0, -0.125], atol=1e-7)
    assert not done


def test_step_rejects_bad_actions_and_misuse():
    env = ReachEnv(seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2))
    env.reset(0)
    with pytest.raises(ValueError, match=r"action: expected shape \(2,\), got \(3,\)"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ValueError, match="image_size"):
        ReachEnv(image_size=4)


def test_success_requires_holding_on_the_named_object():
    env = ReachEnv(seed=0)
    env.reset(11)
    hold = env.config.hold_steps
    _place(env, env.target_position + np.array([0.05, 0.0]))  # inside touch_radius
    for k in range(1, hold + 1):
        _, reward, done, info = env.step(np.zeros(2))
        assert info["success"] == (k == hold) and done == (k == hold)
        assert reward == (1.0 if k == hold else 0.0)
    assert info["touched"] == env.scene.target
    with pytest.raises(RuntimeError, match="over"):
        env.step(np.zeros(2))

    # Just outside the radius never counts.
    env.reset(11)
    _place(env, env.target_position + np.array([0.0, env.config.touch_radius + 0.01]))
    for _ in range(hold + 2):
        _, _, done, info = env.step(np.zeros(2))
    assert not done and not info["success"] and info["touched"] == -1

    # Leaving the radius resets the count.
    env.reset(11)
    _place(env, env.target_position)
    for _ in range(hold - 1):
        env.step(np.zeros(2))
    _, _, done, info = env.step(np.array([1.0, 1.0]))  # 0.14 away: out
    assert np.sqrt(2) * env.config.max_step > env.config.touch_radius and not done
    env.step(np.array([-1.0, -1.0]))  # back in: the count restarts at 1
    for _ in range(hold - 2):
        _, _, done, info = env.step(np.zeros(2))
        assert not done and info["touched"] == -1
    _, _, done, info = env.step(np.zeros(2))
    assert done and info["success"]

    # Crossing the target at full speed is not a touch.
    env.reset(11)
    _place(env, env.target_position - np.array([0.25, 0.0]))
    touched = []
    for _ in range(6):
        _, _, done, info = env.step(np.array([1.0, 0.0]))
        touched.append(info["touched"])
        if done:
            break
    assert touched == [-1] * len(touched)


@pytest.mark.parametrize("config", [ReachConfig(), OBJECT_TASK], ids=["side", "object"])
def test_touching_another_goal_fails_and_time_runs_out(config):
    env = ReachEnv(seed=0, config=config)
    env.reset(11)
    other = (env.scene.target + 1) % len(env.scene.goals)
    _place(env, env.scene.goals[other])
    for _ in range(env.config.hold_steps):
        _, reward, done, info = env.step(np.zeros(2))
    assert done and not info["success"] and reward == 0.0 and info["touched"] == other

    env = ReachEnv(seed=0, config=ReachConfig(max_steps=7))
    env.reset(11)
    _place(env, (-1.0, -1.0))  # corner: goals are at least 0.1 from it
    for t in range(7):
        _, _, done, info = env.step(np.array([-1.0, -1.0]))
        assert done == (t == 6)
    assert info["truncated"] and not info["success"]


def test_render_shows_objects_and_gripper_where_they_are():
    env = ReachEnv(seed=0, image_size=64)
    obs = env.reset(2)
    size = 64

    def pixel(p):  # world -> (row, col) of the containing pixel, main camera
        return int((1.0 - p[1]) / 2 * size), int((p[0] + 1.0) / 2 * size)

    for pos, colour in zip(env.scene.positions, env.scene.colours):
        np.testing.assert_array_equal(obs["image"][pixel(pos)], PALETTE[colour])
    # A ring point of the gripper is dark; the wrist camera's centre shows the table under it.
    r = int(round(np.mean(render.EE_RING) / 2 * size))
    row, col = pixel(env.ee)
    assert obs["image"][row, col + r].max() < 60
    np.testing.assert_array_equal(obs["wrist_image"][size // 2, size // 2], render.TABLE_RGB)
    # On the object, the wrist camera's centre shows its colour (the ring is hollow).
    _place(env, env.scene.positions[0])
    wrist = env.observation()["wrist_image"]
    np.testing.assert_array_equal(wrist[size // 2, size // 2], PALETTE[env.scene.colours[0]])
    # The side goals are not drawn: the spot beside the object is bare table.
    np.testing.assert_array_equal(obs["image"][pixel(env.target_position)], render.TABLE_RGB)
    # Near an edge the wrist camera sees the floor beyond the table.
    _place(env, (1.0, 0.0))
    wrist = env.observation()["wrist_image"]
    np.testing.assert_array_equal(wrist[size // 2, -1], render.FLOOR_RGB)


def test_render_is_fast():
    env = ReachEnv(seed=0, image_size=64)
    env.reset(0)
    n = 200
    start = time.process_time()
    for _ in range(n):
        env.observation()
    per_frame = (time.process_time() - start) / (2 * n)
    assert per_frame < 1e-3, f"{per_frame * 1e3:.2f} ms per 64x64 frame"


@pytest.mark.parametrize("config", [ReachConfig(), OBJECT_TASK], ids=["side", "object"])
def test_expert_succeeds(config):
    env = ReachEnv(seed=0, config=config)
    lengths = []
    for seed in range(N_EPISODES):
        ep = expert_episode(env, seed, noise_std=0.1)
        assert ep["success"], f"expert failed on seed {seed}"
        lengths.append(len(ep["action"]))
    assert max(lengths) < env.max_steps
    # Noise-free expert also succeeds and its actions stay in range.
    obs = env.reset(5)
    done = False
    while not done:
        a = expert_action(env)
        assert a.dtype == np.float32 and np.all(np.abs(a) <= 1)
        obs, _, done, info = env.step(a)
    assert info["success"]


def test_expert_episode_is_consistent_and_reproducible():
    env = ReachEnv(seed=0, image_size=32)
    ep = expert_episode(env, (1, 2, 3), noise_std=0.1)
    again = expert_episode(ReachEnv(seed=9, image_size=32), (1, 2, 3), noise_std=0.1)
    for key in ("image", "wrist_image", "state", "action"):
        np.testing.assert_array_equal(ep[key], again[key])
    n = len(ep["action"])
    assert ep["image"].shape == (n, 32, 32, 3) and ep["state"].shape == (n, 2) and ep["action"].shape == (n, 2)
    # state[t + 1] is state[t] moved by action[t]: the recorded actions really produced the states.
    step = env.config.max_step
    np.testing.assert_allclose(ep["state"][1:], np.clip(ep["state"][:-1] + step * ep["action"][:-1], -1, 1), atol=1e-6)
    # The noise makes the recorded actions differ from the noise-free controller's.
    quiet = expert_episode(env, (1, 2, 3), noise_std=0.0)
    m = min(n, len(quiet["action"]))
    assert np.abs(quiet["action"][:m] - ep["action"][:m]).max() > 0.05
    np.testing.assert_array_equal(quiet["state"][0], ep["state"][0])  # same scene and start


def _rate(env, policy, n=N_EPISODES):
    return float(np.mean([rollout(env, policy, seed)["success"] for seed in range(n)]))


def test_random_policy_almost_never_succeeds():
    env = ReachEnv(seed=0, render_images=False)
    rng = np.random.default_rng(0)
    assert _rate(env, lambda obs: rng.uniform(-1, 1, size=2)) <= 0.05


def _go_to(env, point):
    return np.clip(0.5 * (np.asarray(point) - env.ee) / env.config.max_step, -1, 1)


@pytest.mark.parametrize("config", [ReachConfig(), OBJECT_TASK], ids=["side", "object"])
def test_blind_policies_succeed_only_by_chance(config):
    env = ReachEnv(seed=0, render_images=False, config=config)  # no images to look at: blind by construction
    # Ignores the image: parks at a fixed spot.
    for spot in ([0.0, 0.0], [0.4, -0.4]):
        assert _rate(env, lambda obs: _go_to(env, spot)) <= 0.05
    # Ignores the image: sweeps the table slowly, hoping to stop on the right object.
    waypoints = [(x, y) for i, y in enumerate(np.arange(0.8, -0.81, -0.2))
                 for x in ((-0.8, 0.8) if i % 2 == 0 else (0.8, -0.8))]
    state = {"k": 0}

    def sweep(obs):
        if env.t == 0:
            state["k"] = 0
        d = np.asarray(waypoints[min(state["k"], len(waypoints) - 1)]) - obs["state"]
        dist = np.linalg.norm(d)
        if dist < 0.02:
            state["k"] += 1
        return d / max(dist, 1e-9) * min(0.05, dist) / env.config.max_step

    assert _rate(env, sweep) <= 0.1


@pytest.mark.parametrize("config", [ReachConfig(), OBJECT_TASK], ids=["side", "object"])
def test_instruction_blind_policies_succeed_only_by_chance(config):
    env = ReachEnv(seed=0, render_images=False, config=config)
    env.reset(0)
    chance = 1.0 / len(env.scene.goals)

    def closest(obs):  # reads the image (privileged positions), ignores the instruction
        p = env.scene.goals
        return _go_to(env, p[np.argmin(np.linalg.norm(p - env.ee, axis=1))])

    assert abs(_rate(env, closest) - chance) <= 0.08
    rng = np.random.default_rng(1)
    pick = {}

    def random_object(obs):
        if env.t == 0:
            pick["i"] = int(rng.integers(len(env.scene.goals)))
        return _go_to(env, env.scene.goals[pick["i"]])

    assert abs(_rate(env, random_object) - chance) <= 0.08
    # The same controller told the instruction's object is the expert: the instruction is what matters.
    assert _rate(env, lambda obs: _go_to(env, env.target_position), n=100) == 1.0


def test_rollout_executes_chunks_and_replans():
    env = ReachEnv(seed=0)
    calls = []

    def chunked(obs):  # a 10-step chunk from the expert's controller, extrapolated open loop
        calls.append(obs["state"].copy())
        return np.repeat(expert_action(env)[None], 10, axis=0) * np.linspace(1, 0.2, 10)[:, None]

    out = rollout(env, chunked, seed=4, replan_every=3)
    assert out["success"]
    assert out["queries"] == len(calls) == -(-out["steps"] // 3)
    out = rollout(env, chunked, seed=4)  # whole chunks
    assert out["queries"] == -(-out["steps"] // 10)
    with pytest.raises(ValueError, match=r"policy output"):
        rollout(env, lambda obs: np.zeros((4, 3)), seed=0)
    with pytest.raises(ValueError, match="replan_every"):
        rollout(env, chunked, seed=0, replan_every=0)
