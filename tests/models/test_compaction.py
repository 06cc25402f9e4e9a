"""Prefix compaction: masked cameras and prompt padding leave the prefix, the actions do not change."""
import jax
import numpy as np
import pytest

from shallow_pi_jax.models.observation import dummy_observation
from shallow_pi_jax.models.pi0 import CompactPi0, Pi0, compacted
from shallow_pi_jax.models.prefix import PrefixPlan, prefix_plan, prompt_bucket, prompt_buckets, used_prompt_len
from shallow_pi_jax.serve import policy as policy_lib
from shallow_pi_jax.serve.policy import Policy, load_policy
from shallow_pi_jax.serve.testing import random_params, tiny_config, write_tiny_checkpoint

BASE, LEFT, RIGHT = "base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"
MAX_TOKENS = 80  # buckets 32, 64, 80


def _batch(cfg, prompt_lens, seed=0):
    """Random inputs; right wrist masked everywhere, left wrist masked for the last example only, prompts of
    `prompt_lens` valid tokens. Masked pixels and padding tokens are random: they must not matter."""
    rng = np.random.default_rng(seed)
    b = len(prompt_lens)
    obs = dummy_observation(cfg, b)
    for cam in cfg.image_keys:
        obs["images"][cam] = rng.uniform(-1, 1, obs["images"][cam].shape).astype(np.float32)
    obs["image_masks"][LEFT][-1] = False
    obs["image_masks"][RIGHT][:] = False
    obs["state"] = rng.normal(size=obs["state"].shape).astype(np.float32)
    obs["tokenized_prompt"] = rng.integers(1, cfg.vocab_size, obs["tokenized_prompt"].shape).astype(np.int32)
    obs["tokenized_prompt_mask"] = np.arange(cfg.max_token_len)[None, :] < np.asarray(prompt_lens)[:, None]
    noise = rng.normal(size=(b, cfg.action_horizon, cfg.action_dim)).astype(np.float32)
    return obs, noise


def _sample(model, params, obs, noise):
    return np.asarray(jax.jit(lambda p, o, n: model.apply({"params": p}, None, o, num_steps=4, noise=n,
                                                          method=Pi0.sample_actions))(params, obs, noise))


def _prefix_len(model, params, obs):
    return jax.eval_shape(lambda p, o: model.apply({"params": p}, o, method=Pi0.embed_prefix),
                          params, obs).tokens.shape[1]


def _rel_err(got, ref):
    return float(np.max(np.abs(got - ref)) / max(1.0, float(np.max(np.abs(ref)))))


@pytest.mark.slow
@pytest.mark.parametrize("pi05", [True, False])
def test_compacted_actions_equal_openpi_prefix(pi05):
    cfg = tiny_config(depth=2, pi05=pi05, max_token_len=MAX_TOKENS)
    params = random_params(cfg, seed=1)
    obs, noise = _batch(cfg, prompt_lens=[7, 45, 20])
    model = compacted(cfg, obs)
    # Only the camera masked for the whole batch goes; the per-example mask of the left wrist stays a mask.
    assert model.plan == PrefixPlan((BASE, LEFT), 64)
    assert _prefix_len(model, params, obs) == 2 * cfg.tokens_per_image + 64 < cfg.prefix_len
    assert _prefix_len(Pi0(cfg), params, obs) == cfg.prefix_len
    ref = _sample(Pi0(cfg), params, obs, noise)
    got = _sample(model, params, obs, noise)
    assert _rel_err(got, ref) <= 1e-5
    assert np.max(np.abs(ref)) > 1e-2  # not a degenerate all-zero output
    if not pi05:
        return  # the checks below are about the plan, not the model: once is enough

    # The comparison can fail: dropping a camera that one example sees, or a valid prompt token,
    # changes the actions.
    wrong_camera = CompactPi0(cfg, plan=PrefixPlan((BASE,), 64))
    assert _rel_err(_sample(wrong_camera, params, obs, noise), ref) > 1e-3
    wrong_prompt = CompactPi0(cfg, plan=PrefixPlan((BASE, LEFT), 32))
    assert _rel_err(_sample(wrong_prompt, params, obs, noise), ref) > 1e-3


@pytest.mark.slow
def test_served_policy_compacts_and_compiles_per_bucket(tmp_path):
    cfg = tiny_config(depth=1, max_token_len=MAX_TOKENS)
    root = write_tiny_checkpoint(tmp_path / "student", cfg, seed=2)
    served = load_policy(root, env="libero", tokenizer_path=root / "tokenizer.model", verify=False)
    assert served.compact_prefix and not load_policy(root, env="libero", tokenizer_path=root / "tokenizer.model",
                                                     verify=False, compact_prefix=False).compact_prefix
    params = served.params
    short, noise = _batch(cfg, prompt_lens=[3, 30], seed=3)
    plain = Policy(cfg, params, skip_masked_cameras=False).sample(short, noise)
    pol = served  # what the server runs: compacted, 10 steps
    assert _rel_err(pol.sample(short, noise), plain) <= 1e-5
    before = policy_lib._sample._cache_size()
    pol.sample(_batch(cfg, prompt_lens=[32, 1], seed=4)[0], noise)  # same bucket (32): no new program
    assert policy_lib._sample._cache_size() == before
    longer, _ = _batch(cfg, prompt_lens=[33, 2], seed=5)
    pol.sample(longer, noise)  # bucket 64: one more program
    assert policy_lib._sample._cache_size() == before + 1


def test_bucket_choice():
    assert prompt_buckets(200) == (32, 64, 128, 200)
    assert prompt_buckets(48) == (32, 48)  # π0's prompt length caps the buckets
    assert prompt_buckets(16) == (16,)
    assert [prompt_bucket(n, 200) for n in (0, 1, 32, 33, 64, 65, 128, 129, 200)] == \
        [32, 32, 32, 64, 64, 128, 128, 200, 200]
    assert prompt_bucket(20, 200, buckets=(16, 24)) == 24
    with pytest.raises(ValueError, match="max_token_len"):
        prompt_bucket(201, 200)
    # The cut is after the last valid slot of any example, whatever the mask looks like before it.
    mask = np.zeros((2, 200), bool)
    mask[0, :10] = True
    mask[1, 40] = True
    assert used_prompt_len(mask) == 41
    assert used_prompt_len(np.zeros((3, 200), bool)) == 0
    cfg = tiny_config(max_token_len=200)
    masks = {BASE: np.array([True, False]), LEFT: np.array([False, False]), RIGHT: np.array([False, True])}
    assert prefix_plan(cfg, masks, mask) == PrefixPlan((BASE, RIGHT), 64)
    with pytest.raises(ValueError, match="tokenized_prompt_mask"):
        prefix_plan(cfg, masks, mask[:, :100])


def test_bad_plan_names_the_field():
    cfg = tiny_config(depth=1)
    params = random_params(cfg, seed=0)
    obs, _ = _batch(cfg, prompt_lens=[3])
    for plan, field in ((PrefixPlan(("nope",), 32), "cameras"), (PrefixPlan((LEFT, BASE), 32), "subsequence"),
                        (PrefixPlan((BASE,), cfg.max_token_len + 1), "prompt_len")):
        with pytest.raises(ValueError, match=field):
            _prefix_len(CompactPi0(cfg, plan=plan), params, obs)
