"""Policy: camera skipping is exact and saves compute, noise control, compile caching, transforms, loading."""
import json

import jax
import numpy as np
import pytest

from shallow_pi_jax.data import norm_stats
from shallow_pi_jax.models.observation import dummy_observation
from shallow_pi_jax.models.pi0 import Pi0
from shallow_pi_jax.serve import policy as policy_lib
from shallow_pi_jax.serve.policy import Policy, load_checkpoint, load_policy
from shallow_pi_jax.serve.testing import (
    random_params,
    tiny_config,
    write_tiny_checkpoint,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config(depth=2)
    return cfg, random_params(cfg, seed=3)


def _obs(cfg, b, seed=0):
    rng = np.random.default_rng(seed)
    obs = dummy_observation(cfg, b)
    for cam in cfg.image_keys:
        obs["images"][cam] = rng.uniform(-1, 1, obs["images"][cam].shape).astype(np.float32)
    obs["state"] = rng.normal(size=obs["state"].shape).astype(np.float32)
    obs["tokenized_prompt"] = rng.integers(0, cfg.vocab_size, obs["tokenized_prompt"].shape).astype(np.int32)
    obs["tokenized_prompt_mask"][:, cfg.max_token_len // 2:] = False
    return obs


@pytest.mark.parametrize("pi05", [True, False])
def test_skipping_masked_cameras_is_exact(pi05):
    cfg = tiny_config(depth=2, pi05=pi05)
    params = random_params(cfg, seed=1)
    obs = _obs(cfg, 3)
    obs["image_masks"]["right_wrist_0_rgb"][:] = False
    # The masked camera's pixels must not matter on either path.
    obs["images"]["right_wrist_0_rgb"] = np.full_like(obs["images"]["right_wrist_0_rgb"], 0.7)
    noise = np.random.default_rng(5).normal(size=(3, cfg.action_horizon, cfg.action_dim)).astype(np.float32)
    skipped = Policy(cfg, params).sample(obs, noise)
    plain = Policy(cfg, params, skip_masked_cameras=False).sample(obs, noise)
    reference = jax.jit(lambda p, o, n: Pi0(cfg).apply({"params": p}, None, o, num_steps=10, noise=n,
                                                       method=Pi0.sample_actions))(params, obs, noise)
    assert np.max(np.abs(skipped - plain)) <= 1e-6
    assert np.max(np.abs(skipped - np.asarray(reference))) <= 1e-6
    assert np.max(np.abs(skipped)) > 1e-2  # not a degenerate all-zero output


def test_camera_masked_for_part_of_the_batch_is_computed(tiny):
    cfg, params = tiny
    obs = _obs(cfg, 2)
    obs["image_masks"]["left_wrist_0_rgb"] = np.array([True, False])
    assert policy_lib.active_cameras(cfg, obs["image_masks"]) == cfg.image_keys
    noise = np.zeros((2, cfg.action_horizon, cfg.action_dim), np.float32)
    a = Policy(cfg, params).sample(obs, noise)
    b = Policy(cfg, params, skip_masked_cameras=False).sample(obs, noise)
    np.testing.assert_array_equal(a, b)


def test_skipping_saves_vision_flops(tiny):
    cfg, params = tiny
    obs = _obs(cfg, 1)
    noise = np.zeros((1, cfg.action_horizon, cfg.action_dim), np.float32)

    def flops(active):
        c = policy_lib._sample.lower(params, obs, noise, cfg=cfg, num_steps=2, active=active).compile()
        ca = c.cost_analysis()
        return (ca[0] if isinstance(ca, list) else ca)["flops"]

    all_cams, two = flops(None), flops(cfg.image_keys[:2])
    assert two < all_cams
    # Removing one camera's vision tower removes roughly a third of the vision compute, not nothing.
    assert all_cams - two > 0.01 * all_cams


def test_fixed_noise_is_reproducible_and_fresh_noise_is_not(tiny):
    cfg, params = tiny
    obs = _obs(cfg, 1)
    fixed = Policy(cfg, params, noise_seed=7)
    np.testing.assert_array_equal(fixed.sample(obs), fixed.sample(obs))
    np.testing.assert_array_equal(fixed.sample(obs), Policy(cfg, params, noise_seed=7).sample(obs))
    fresh = Policy(cfg, params, seed=0)
    assert np.max(np.abs(fresh.sample(obs) - fresh.sample(obs))) > 1e-3
    # Same seed, same sequence of draws.
    np.testing.assert_array_equal(Policy(cfg, params, seed=4).sample(obs), Policy(cfg, params, seed=4).sample(obs))


def test_compiled_once_per_batch_shape(tiny):
    cfg, params = tiny
    pol = Policy(cfg, params, num_steps=3)
    before = policy_lib._sample._cache_size()
    for seed in range(3):
        pol.sample(_obs(cfg, 1, seed))
    assert policy_lib._sample._cache_size() == before + 1
    for seed in range(2):
        pol.sample(_obs(cfg, 2, seed))
    assert policy_lib._sample._cache_size() == before + 2


def test_bad_model_input_names_the_field(tiny):
    cfg, params = tiny
    obs = _obs(cfg, 1)
    obs["state"] = obs["state"][:, :3]
    with pytest.raises(ValueError, match="observation.state"):
        Policy(cfg, params).sample(obs)
    with pytest.raises(ValueError, match="noise"):
        Policy(cfg, params).sample(_obs(cfg, 1), np.zeros((1, 2, 2), np.float32))


def _libero_request(seed=0, size=32):
    rng = np.random.default_rng(seed)
    return {"observation/image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "observation/state": rng.normal(size=8).astype(np.float32),
            "prompt": "reach the red ball"}


def test_load_policy_applies_openpi_transforms(tmp_path):
    cfg = tiny_config(depth=2)
    root = write_tiny_checkpoint(tmp_path / "student", cfg, seed=2,
                                 layer_map={"teacher_depth": 4, "indices": [0, 3], "strategy": "uniform"})
    pol = load_policy(root, env="libero", tokenizer_path=root / "tokenizer.model", noise_seed=0)
    assert pol.metadata["layer_map"]["indices"] == [0, 3]
    assert pol.metadata["robot_action_dim"] == 7 and pol.metadata["depth"] == 2
    req = _libero_request()
    out = pol.infer(req)
    assert out["actions"].shape == (cfg.action_horizon, 7) and out["actions"].dtype == np.float32
    assert out["policy_timing"]["infer_ms"] > 0

    # The same by hand: input transform → model → unnormalise with the checkpoint's stats (quantile, π0.5).
    inputs = pol.input_transform(req)
    assert not inputs["image_masks"]["right_wrist_0_rgb"] and inputs["image_masks"]["base_0_rgb"]
    batched = jax.tree.map(lambda x: np.asarray(x)[None], inputs)
    model_actions = jax.jit(lambda p, o, n: Pi0(cfg).apply({"params": p}, None, o, num_steps=10, noise=n,
                                                           method=Pi0.sample_actions))(
        pol.params, batched, pol.noise(1))[0]
    s = norm_stats.load(root / "assets" / "norm_stats.json")["actions"]
    want = (np.asarray(model_actions)[:, :7] + 1) / 2 * (s.q99 - s.q01 + 1e-6) + s.q01
    np.testing.assert_allclose(out["actions"], want, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(out["state"], inputs["state"])

    bad = dict(req)
    del bad["observation/wrist_image"]
    with pytest.raises(ValueError, match="wrist_image"):
        pol.infer(bad)


def test_openpi_checkpoint_layout_uses_preset_sizes(tmp_path):
    cfg = tiny_config(depth=1)
    root = write_tiny_checkpoint(tmp_path / "teacher", cfg, tokenizer=False)
    (root / "model_config.json").unlink()  # openpi checkpoints have none
    (root / "checksums.json").unlink()  # nor a checksum manifest
    stats = root / "assets" / "norm_stats.json"
    nested = root / "assets" / "physical-intelligence" / "libero" / "norm_stats.json"
    nested.parent.mkdir(parents=True)
    stats.rename(nested)
    ckpt = load_checkpoint(root / "params", preset=policy_lib.get_preset("libero"))
    assert ckpt.config.action_horizon == 10 and ckpt.config.max_token_len == 200  # openpi's pi05_libero
    assert ckpt.config.llm == cfg.llm and ckpt.config.siglip == cfg.siglip
    assert ckpt.norm_stats == nested and ckpt.layer_map is None
    (root / "assets" / "other").mkdir()
    (root / "assets" / "other" / "norm_stats.json").write_text(json.dumps({"norm_stats": {}}))
    assert load_checkpoint(root, preset=policy_lib.get_preset("libero")).norm_stats == nested
    with pytest.raises(ValueError, match="several norm_stats.json"):
        load_checkpoint(root, preset=policy_lib.get_preset("droid"))


def test_missing_tokenizer_and_unknown_env_are_clear_errors(tmp_path):
    root = write_tiny_checkpoint(tmp_path / "s", tiny_config(depth=1), tokenizer=False)
    with pytest.raises(ValueError, match="tokenizer"):
        load_policy(root, env="libero")
    with pytest.raises(ValueError, match="env: unknown preset"):
        load_policy(root, env="mars_rover")
    with pytest.raises(ValueError, match="action_horizon"):
        load_checkpoint(root, action_horizon=99)
