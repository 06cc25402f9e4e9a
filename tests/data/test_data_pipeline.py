"""End-to-end RLDS pipeline on tiny LIBERO and DROID datasets written inside the tests.

Every image encodes (episode, step) in its pixels, so each output example can be traced back to
its frame and checked against numpy computations on the raw episodes.
"""
import dataclasses

import numpy as np
import pytest

from shallow_pi_jax.data import norm_stats as ns
from shallow_pi_jax.data import synthetic
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.data.pipeline import make_dataset
from shallow_pi_jax.data.tokenizer import PaligemmaTokenizer
from shallow_pi_jax.data.transforms import make_input_transform, make_output_transform

LENGTHS = (5, 9, 3, 7, 6)
CAMS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("rlds")
    rng = np.random.default_rng(0)
    libero_eps = [synthetic.libero_episode(rng, n, index=i) for i, n in enumerate(LENGTHS)]
    synthetic.write_dataset("tiny_libero", str(root), synthetic.libero_features(image_hw=(32, 32)), libero_eps)
    droid_eps = [synthetic.droid_episode(rng, n, index=i, instructions=("wipe the table", "", "clean up"))
                 for i, n in enumerate((8, 6))]
    synthetic.write_dataset("tiny_droid", str(root), synthetic.droid_features(), droid_eps)
    tok = tokenizer
    raw_state = {i: np.stack([s["observation"]["state"] for s in ep["steps"]]) for i, ep in enumerate(libero_eps)}
    raw_act = {i: np.stack([s["action"] for s in ep["steps"]]) for i, ep in enumerate(libero_eps)}
    stats = {"state": ns.compute(np.concatenate(list(raw_state.values()))),
             "actions": ns.compute(np.concatenate(list(raw_act.values())))}
    ns.save(stats, root / "libero_stats.json")
    d_state = np.concatenate([np.stack([np.concatenate([s["observation"]["joint_position"],
                                                        s["observation"]["gripper_position"]])
                                        for s in ep["steps"]]) for ep in droid_eps])
    ns.save({"state": ns.compute(d_state), "actions": ns.compute(d_state)}, root / "droid_stats.json")
    return dict(root=str(root), tok=tok, libero=libero_eps, droid=droid_eps, raw_state=raw_state, raw_act=raw_act,
                stats=stats)


def libero_cfg(world, **kw):
    base = dict(datasets=(DatasetSpec("tiny_libero", world["root"], "libero"),), batch_size=4, horizon=4,
                action_dim=12, image_size=16, max_token_len=32, tokenizer_path=world["tok"],
                norm_stats_path=world["root"] + "/libero_stats.json", shuffle_buffer=16, seed=3,
                process_index=0, process_count=1)
    base.update(kw)
    return DataConfig(**base)


def trace(batch, i):
    """(episode, step) encoded in the base camera's red/green pixel values."""
    px = (batch["images"]["base_0_rgb"][i, 0, 0] + 1.0) / 2.0 * 255.0
    return int(round(px[0])), int(round(px[1]))


def all_examples(it):
    out = []
    for batch in it:
        for i in range(batch["state"].shape[0]):
            out.append((trace(batch, i), {k: (v[i] if not isinstance(v, dict) else {c: x[i] for c, x in v.items()})
                                          for k, v in batch.items()}))
    return out


def test_libero_eval_pass_matches_numpy(world):
    cfg = libero_cfg(world)
    examples = all_examples(make_dataset(cfg, train=False))
    assert sorted(k for k, _ in examples) == [(e, t) for e, n in enumerate(LENGTHS) for t in range(n)]
    st, at = world["stats"]["state"], world["stats"]["actions"]
    tok = PaligemmaTokenizer(world["tok"], cfg.max_token_len)
    for (e, t), ex in examples:
        n = LENGTHS[e]
        want_state = (world["raw_state"][e][t] - st.mean) / (st.std + 1e-6)
        np.testing.assert_allclose(ex["state"][:8], want_state, atol=1e-5)
        assert ex["state"].shape == (12,) and (ex["state"][8:] == 0).all()
        idx = np.minimum(t + np.arange(cfg.horizon), n - 1)  # clamped at the episode end
        want_act = (world["raw_act"][e][idx] - at.mean) / (at.std + 1e-6)
        np.testing.assert_allclose(ex["actions"][:, :7], want_act, atol=1e-5)
        assert ex["actions"].shape == (4, 12) and (ex["actions"][:, 7:] == 0).all()
        assert ex["image_masks"]["base_0_rgb"] and ex["image_masks"]["left_wrist_0_rgb"]
        assert not ex["image_masks"]["right_wrist_0_rgb"]
        assert (ex["images"]["right_wrist_0_rgb"] == -1.0).all()
        np.testing.assert_allclose(ex["images"]["left_wrist_0_rgb"][..., 2], 200 / 255 * 2 - 1, atol=1e-6)
        tokens, mask = tok.tokenize(synthetic.TASKS[e % len(synthetic.TASKS)])
        np.testing.assert_array_equal(ex["tokenized_prompt"], tokens)
        np.testing.assert_array_equal(ex["tokenized_prompt_mask"], mask)


def test_batch_contract_dtypes_and_shapes(world):
    cfg = libero_cfg(world)
    batch = next(make_dataset(cfg, train=True))
    assert set(batch) == {"images", "image_masks", "state", "tokenized_prompt", "tokenized_prompt_mask", "actions"}
    for cam in CAMS:
        assert batch["images"][cam].shape == (4, 16, 16, 3) and batch["images"][cam].dtype == np.float32
        assert batch["images"][cam].min() >= -1.0 and batch["images"][cam].max() <= 1.0
        assert batch["image_masks"][cam].shape == (4,) and batch["image_masks"][cam].dtype == bool
    assert batch["state"].shape == (4, 12) and batch["state"].dtype == np.float32
    assert batch["actions"].shape == (4, 4, 12) and batch["actions"].dtype == np.float32
    assert batch["tokenized_prompt"].shape == (4, 32) and batch["tokenized_prompt"].dtype == np.int32
    assert batch["tokenized_prompt_mask"].dtype == bool


def test_training_is_deterministic_per_seed_and_repeats(world):
    cfg = libero_cfg(world)
    a, b = make_dataset(cfg), make_dataset(cfg)
    c = make_dataset(dataclasses.replace(cfg, seed=4))
    n_batches = 9  # 36 examples > 30 frames: the stream must repeat
    ba, bb, bc = ([next(it) for _ in range(n_batches)] for it in (a, b, c))
    for x, y in zip(ba, bb):
        for cam in CAMS:
            np.testing.assert_array_equal(x["images"][cam], y["images"][cam])
        np.testing.assert_array_equal(x["actions"], y["actions"])
    assert any(not np.array_equal(x["state"], z["state"]) for x, z in zip(ba, bc))


def test_augmentation_changes_pixels_once_per_example(world):
    cfg = libero_cfg(world, image_size=32)
    aug = make_dataset(cfg)
    plain = make_dataset(dataclasses.replace(cfg, augment=False))
    x, y = next(aug), next(plain)
    np.testing.assert_array_equal(x["state"], y["state"])  # same frames, same order
    for cam in ("base_0_rgb", "left_wrist_0_rgb"):
        assert np.abs(x["images"][cam] - y["images"][cam]).max() > 0.01
    # Rotation / crop only for non-wrist cameras: the wrist image stays spatially uniform.
    wrist = x["images"]["left_wrist_0_rgb"]
    assert np.ptp(wrist[:, :, :, 2], axis=(1, 2)).max() < 1e-5
    base = x["images"]["base_0_rgb"]
    assert (base[:, 0, 0] < -0.99).all() or np.ptp(base, axis=(1, 2)).max() > 0.01  # rotated corners


def test_pi05_quantile_norm_and_state_in_prompt(world):
    cfg = libero_cfg(world, pi05=True, max_token_len=120)
    q = world["stats"]["state"]
    tok = PaligemmaTokenizer(world["tok"], cfg.max_token_len)
    for (e, t), ex in all_examples(make_dataset(cfg, train=False))[:8]:
        want = (world["raw_state"][e][t] - q.q01) / (q.q99 - q.q01 + 1e-6) * 2 - 1
        np.testing.assert_allclose(ex["state"][:8], want, atol=1e-5)
        tokens, mask = tok.tokenize(synthetic.TASKS[e % len(synthetic.TASKS)], ex["state"][:8])
        np.testing.assert_array_equal(ex["tokenized_prompt"], tokens)
        assert "State:" in tok.decode(tokens[mask])


def test_process_shards_are_disjoint_and_complete(world):
    seen = []
    for index in (0, 1):
        cfg = libero_cfg(world, process_index=index, process_count=2)
        seen.append({k for k, _ in all_examples(make_dataset(cfg, train=False))})
    assert seen[0] and seen[1] and not (seen[0] & seen[1])
    assert seen[0] | seen[1] == {(e, t) for e, n in enumerate(LENGTHS) for t in range(n)}


def test_droid_layout_and_mixture_weights(world):
    droid = DatasetSpec("tiny_droid", world["root"], "droid", weight=1.0,
                        norm_stats=world["root"] + "/droid_stats.json")
    libero = DatasetSpec("tiny_libero", world["root"], "libero", weight=3.0)
    cfg = libero_cfg(world, datasets=(libero, droid), batch_size=25, augment=False)
    it = make_dataset(cfg)
    kinds = {"libero": 0, "droid_ext1": 0, "droid_ext2": 0}
    prompts = set()
    for _ in range(16):
        batch = next(it)
        for i in range(25):
            # Centre pixel: DROID's 18x32 frames are letterboxed (black rows) at 16x16.
            blue = round((batch["images"]["base_0_rgb"][i, 8, 8, 2] + 1) / 2 * 255)
            if blue == 10:
                kinds["libero"] += 1
                continue
            assert abs(blue - 40) <= 3 or abs(blue - 200) <= 3, blue  # JPEG-coded constants
            kinds["droid_ext1" if blue < 120 else "droid_ext2"] += 1
            m = batch["tokenized_prompt_mask"][i]
            prompts.add(it.tokenizer.decode(batch["tokenized_prompt"][i][m]).strip())
    total = sum(kinds.values())
    assert abs(kinds["libero"] / total - 0.75) < 0.08, kinds
    assert kinds["droid_ext1"] > 0 and kinds["droid_ext2"] > 0  # one exterior camera per episode, at random
    assert prompts <= {"wipe the table", "clean up"}  # empty instructions are never chosen


def test_droid_state_and_actions_concatenate_joint_and_gripper(world):
    spec = DatasetSpec("tiny_droid", world["root"], "droid", norm_stats=world["root"] + "/droid_stats.json")
    cfg = libero_cfg(world, datasets=(spec,), horizon=3, batch_size=1)
    # openpi's idle filter drops each episode's last frame (its clamped chunk does not move).
    assert len(list(make_dataset(cfg, train=False))) == 8 + 6 - 2
    no_idle = dataclasses.replace(spec.mapping, idle_threshold=None)
    cfg = dataclasses.replace(cfg, datasets=(dataclasses.replace(spec, mapping=no_idle),))
    s = ns.load(world["root"] + "/droid_stats.json")["state"]
    ep = world["droid"][0]["steps"]
    got = [b for b in make_dataset(cfg, train=False)]
    states = np.stack([b["state"][0, :8] for b in got])
    raw = np.stack([np.concatenate([x["observation"]["joint_position"], x["observation"]["gripper_position"]])
                    for x in ep])
    np.testing.assert_allclose(states[: len(ep)], ((raw - s.mean) / (s.std + 1e-6)).astype(np.float32), atol=1e-5)
    act = got[0]["actions"][0, :, :8]
    raw_a = np.stack([np.concatenate([x["action_dict"]["joint_position"], x["action_dict"]["gripper_position"]])
                      for x in ep[:3]])
    a = ns.load(world["root"] + "/droid_stats.json")["actions"]
    np.testing.assert_allclose(act, (raw_a - a.mean) / (a.std + 1e-6), atol=1e-5)


def test_delta_actions_and_output_transform_round_trip(world):
    mask = (True, True, True, False, False, False, False)
    cfg = libero_cfg(world, delta_action_mask=mask)
    at = world["stats"]["actions"]
    out = make_output_transform(cfg)
    for (e, t), ex in all_examples(make_dataset(cfg, train=False))[:6]:
        idx = np.minimum(t + np.arange(cfg.horizon), LENGTHS[e] - 1)
        raw = world["raw_act"][e][idx]
        delta = raw - np.where(mask, world["raw_state"][e][t][:7], 0)
        np.testing.assert_allclose(ex["actions"][:, :7], (delta - at.mean) / (at.std + 1e-6), atol=1e-4)
        back = out(ex["actions"], raw_state=world["raw_state"][e][t])
        assert back.shape == (cfg.horizon, 7)  # LIBERO robots take 7 dims
        np.testing.assert_allclose(back, raw, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="raw_state"):
        out(ex["actions"])


def test_input_transform_matches_training_pipeline(world):
    cfg = libero_cfg(world, pi05=True, max_token_len=120)
    inp = make_input_transform(cfg)
    (e, t), ex = all_examples(make_dataset(cfg, train=False))[0]
    step = world["libero"][e]["steps"][t]
    obs = {"observation/image": step["observation"]["image"],
           "observation/wrist_image": step["observation"]["wrist_image"],
           "observation/state": step["observation"]["state"], "prompt": step["language_instruction"]}
    got = inp(obs)
    for cam in CAMS:
        np.testing.assert_allclose(got["images"][cam], ex["images"][cam], atol=1e-6)
        assert bool(got["image_masks"][cam]) == bool(ex["image_masks"][cam])
    np.testing.assert_allclose(got["state"], ex["state"], atol=1e-6)
    np.testing.assert_array_equal(got["tokenized_prompt"], ex["tokenized_prompt"])
    np.testing.assert_array_equal(got["tokenized_prompt_mask"], ex["tokenized_prompt_mask"])
    with pytest.raises(ValueError, match="observation/wrist_image"):
        inp({k: v for k, v in obs.items() if k != "observation/wrist_image"})
