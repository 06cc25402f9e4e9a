"""The demo RLDS dataset: layout, content that matches the simulator, determinism, caching, atomicity."""
import json
import os

import numpy as np
import pytest

from shallow_pi_jax.sim import demo_dataset
from shallow_pi_jax.sim.env import ReachEnv

NUM, SIZE = 5, 32


def _read(data_dir):
    """Episodes in episode_index order: dict of stacked step arrays plus metadata."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(f"{demo_dataset.DATASET_NAME}:{demo_dataset.VERSION}", data_dir=str(data_dir))
    episodes = []
    for ep in builder.as_dataset(split="train"):
        steps = list(ep["steps"].as_numpy_iterator())
        out = {
            "image": np.stack([s["observation"]["image"] for s in steps]),
            "wrist_image": np.stack([s["observation"]["wrist_image"] for s in steps]),
            "state": np.stack([s["observation"]["state"] for s in steps]),
            "language_instruction": [s["language_instruction"].decode() for s in steps],
            "index": int(ep["episode_metadata"]["episode_index"]),
            "file_path": ep["episode_metadata"]["file_path"].numpy().decode(),
            "reset_seed": tuple(ep["episode_metadata"]["reset_seed"].numpy().tolist()),
        }
        for key in ("action", "reward", "discount", "is_first", "is_last", "is_terminal"):
            out[key] = np.stack([s[key] for s in steps])
        episodes.append(out)
    return builder, sorted(episodes, key=lambda e: e["index"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    demo = demo_dataset.build_demo_dataset(root / "a", num_episodes=NUM, seed=3, image_size=SIZE)
    return demo, _read(demo.data_dir)


def test_layout_is_libero_rlds(built):
    demo, (builder, episodes) = built
    assert sorted(os.listdir(demo.data_dir)) == ["demo_info.json", "shallow_pi_demo", "tokenizer.model"]
    assert builder.info.splits["train"].num_examples == NUM
    steps = builder.info.features["steps"]
    obs = steps["observation"]
    assert obs["image"].shape == (SIZE, SIZE, 3) and obs["image"].dtype == np.uint8
    assert obs["wrist_image"].shape == (SIZE, SIZE, 3)
    assert obs["state"].shape == (2,) and obs["state"].dtype == np.float32
    assert steps["action"].shape == (2,) and steps["action"].dtype == np.float32
    for key in ("is_first", "is_last", "is_terminal", "reward", "discount", "language_instruction"):
        assert key in steps
    assert [e["index"] for e in episodes] == list(range(NUM))
    total = 0
    for e in episodes:
        n = len(e["action"])
        total += n
        np.testing.assert_array_equal(e["is_first"], np.arange(n) == 0)
        np.testing.assert_array_equal(e["is_last"], np.arange(n) == n - 1)
        np.testing.assert_array_equal(e["is_terminal"], np.arange(n) == n - 1)
        np.testing.assert_array_equal(e["reward"], (np.arange(n) == n - 1).astype(np.float32))
        np.testing.assert_array_equal(e["discount"], np.ones(n, np.float32))
        assert len(set(e["language_instruction"])) == 1
        assert e["file_path"] == f"shallow_pi_demo/episode_{e['index']:05d}"
    info = json.loads((demo.data_dir / "demo_info.json").read_text())
    assert info["num_episodes"] == NUM and info["num_steps"] == total
    assert info["params"]["seed"] == 3 and info["params"]["image_size"] == SIZE


def test_episodes_are_the_simulator_s(built):
    """Images, states and instruction are exactly what ReachEnv shows, and actions drive the states."""
    _, (_, episodes) = built
    env = ReachEnv(seed=0, image_size=SIZE)
    step = env.config.max_step
    for e in episodes:
        assert e["reset_seed"][:2] == (demo_dataset.DEMO_STREAM, 3)
        obs = env.reset(e["reset_seed"])
        assert e["language_instruction"][0] == obs["instruction"]
        np.testing.assert_array_equal(e["image"][0], obs["image"])
        np.testing.assert_array_equal(e["wrist_image"][0], obs["wrist_image"])
        np.testing.assert_array_equal(e["state"][0], obs["state"])
        # Replaying the stored actions reproduces every stored frame and ends in success.
        for t, action in enumerate(e["action"]):
            if t:
                np.testing.assert_array_equal(e["state"][t], obs["state"])
                np.testing.assert_array_equal(e["image"][t], obs["image"])
                np.testing.assert_array_equal(e["wrist_image"][t], obs["wrist_image"])
            obs, reward, done, info = env.step(action)
        assert done and info["success"] and reward == 1.0
        np.testing.assert_allclose(e["state"][1:], np.clip(e["state"][:-1] + step * e["action"][:-1], -1, 1),
                                   atol=1e-6)
        # Actions point at the named goal (not noise): the first move closes the distance.
        target = env.target_position
        assert np.linalg.norm(e["state"][1] - target) < np.linalg.norm(e["state"][0] - target) - 0.5 * step


def test_deterministic_and_cached(built, tmp_path):
    demo, (_, episodes) = built
    again = demo_dataset.build_demo_dataset(tmp_path / "b", num_episodes=NUM, seed=3, image_size=SIZE)
    _, episodes_b = _read(again.data_dir)
    for a, b in zip(episodes, episodes_b, strict=True):
        for key in ("image", "wrist_image", "state", "action", "reward", "is_last"):
            np.testing.assert_array_equal(a[key], b[key])
        assert a["language_instruction"] == b["language_instruction"]
    assert (demo.tokenizer_path).read_bytes() == again.tokenizer_path.read_bytes()
    assert (demo.data_dir / "demo_info.json").read_bytes() == (again.data_dir / "demo_info.json").read_bytes()

    # Cached: same parameters return the existing build without touching it.
    stamp = {p: p.stat().st_mtime_ns for p in again.data_dir.rglob("*")}
    cached = demo_dataset.build_demo_dataset(tmp_path / "b", num_episodes=NUM, seed=3, image_size=SIZE)
    assert cached.info == again.info
    assert {p: p.stat().st_mtime_ns for p in again.data_dir.rglob("*")} == stamp

    # Another seed: different episodes.
    other = demo_dataset.build_demo_dataset(tmp_path / "c", num_episodes=2, seed=4, image_size=SIZE)
    _, episodes_c = _read(other.data_dir)
    assert not np.array_equal(episodes_c[0]["image"][0], episodes[0]["image"][0])


def test_refuses_to_clobber_and_overwrites_on_request(tmp_path):
    target = tmp_path / "d"
    demo_dataset.build_demo_dataset(target, num_episodes=2, seed=0, image_size=SIZE)
    with pytest.raises(ValueError, match="other parameters"):
        demo_dataset.build_demo_dataset(target, num_episodes=3, seed=0, image_size=SIZE)
    demo = demo_dataset.build_demo_dataset(target, num_episodes=3, seed=0, image_size=SIZE, overwrite=True)
    assert demo.info["num_episodes"] == 3 and len(_read(target)[1]) == 3
    assert sorted(os.listdir(tmp_path)) == ["d"]  # no temporary or old copies left

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="other files"):
        demo_dataset.build_demo_dataset(foreign, num_episodes=2, image_size=SIZE)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="num_episodes"):
        demo_dataset.build_demo_dataset(tmp_path / "e", num_episodes=0)
    with pytest.raises(ValueError, match="image_size"):
        demo_dataset.build_demo_dataset(tmp_path / "e", image_size=2)


def test_killed_build_leaves_nothing(tmp_path):
    def dies_midway(episodes):
        for i, ep in enumerate(episodes):
            if i == 2:
                raise KeyboardInterrupt("killed")
            yield ep

    with pytest.raises(KeyboardInterrupt):
        demo_dataset.build_demo_dataset(tmp_path / "k", num_episodes=4, image_size=SIZE, progress=dies_midway)
    assert os.listdir(tmp_path) == []


def test_tokenizer(built):
    import sentencepiece

    demo, (_, episodes) = built
    sp = sentencepiece.SentencePieceProcessor(model_file=str(demo.tokenizer_path))
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "</s>", "<s>", "<unk>"]
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sp.get_piece_size() == demo.info["params"]["tokenizer_vocab"]
    assert sp.encode("\n") == [sp.piece_to_id("\n")]  # openpi's pi0 appends this token
    for text in ["Grab the orange mug ü 🙂", "Task: go to the red ball, State: 12 255;\nAction: ",
                 episodes[0]["language_instruction"][0]]:
        ids = sp.encode(text)
        assert sp.unk_id() not in ids
        assert sp.decode(ids) == text
    # Colour words are whole tokens: the instruction's content is one token away.
    for colour in ("red", "green", "blue", "yellow", "purple", "cyan"):
        assert len(sp.encode(f"the {colour} block")) < len(f"the {colour} block") // 2
        assert sp.piece_to_id(f"▁{colour}") != sp.unk_id()


def test_read_by_the_data_pipeline_libero_mapping(built, tmp_path):
    """The trainer's input pipeline reads it as is with the LIBERO mapping."""
    from shallow_pi_jax.data import dataset_stats, norm_stats
    from shallow_pi_jax.data.config import DataConfig, DatasetSpec
    from shallow_pi_jax.data.pipeline import make_dataset

    demo, _ = built
    spec = DatasetSpec(name=demo_dataset.DATASET_NAME, data_dir=str(demo.data_dir), mapping="libero")
    cfg = DataConfig(datasets=(spec,), batch_size=4, horizon=4, action_dim=8, image_size=SIZE, max_token_len=24,
                     tokenizer_path=str(demo.tokenizer_path), norm_stats_path=str(tmp_path / "norm_stats.json"),
                     augment=False, shuffle_buffer=16)
    norm_stats.save(dataset_stats.compute(cfg, cfg.datasets, progress=False), cfg.norm_stats_path)
    batch = next(make_dataset(cfg, train=True))
    assert batch["images"]["base_0_rgb"].shape == (4, SIZE, SIZE, 3)
    assert batch["image_masks"]["left_wrist_0_rgb"].all() and not batch["image_masks"]["right_wrist_0_rgb"].any()
    assert batch["state"].shape == (4, 8) and batch["actions"].shape == (4, 4, 8)
    np.testing.assert_array_equal(batch["actions"][..., 2:], 0.0)  # padding beyond the 2 real dims
    assert (batch["tokenized_prompt"][:, 0] == 2).all()  # bos
