"""Bad data gives clear errors (or counted skips); norm stats equal numpy's and load in openpi's format."""
import json

import numpy as np
import pytest

from shallow_pi_jax import compute_norm_stats as cli
from shallow_pi_jax.data import norm_stats as ns
from shallow_pi_jax.data import synthetic
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.data.pipeline import make_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(1)
    good = [synthetic.libero_episode(rng, n, index=i) for i, n in enumerate((4, 6, 5))]
    synthetic.write_dataset("good", str(root), synthetic.libero_features(), good)
    nan_ep = synthetic.libero_episode(rng, 4, index=7)
    nan_ep["steps"][2]["action"][3] = np.nan
    empty_ep = {"steps": [], "episode_metadata": {"file_path": "/data/empty.hdf5"}}
    synthetic.write_dataset("bad", str(root), synthetic.libero_features(), [good[0], nan_ep, empty_ep, good[1]])
    synthetic.write_dataset("has_nan", str(root), synthetic.libero_features(), [good[0], nan_ep])
    synthetic.write_dataset("has_empty", str(root), synthetic.libero_features(), [empty_ep, good[1]])
    int_state = [synthetic.libero_episode(rng, 3, index=0)]
    int_state[0]["steps"] = [{**s, "observation": {**s["observation"],
                                                   "state": s["observation"]["state"].astype(np.int32)}}
                             for s in int_state[0]["steps"]]
    synthetic.write_dataset("int_state", str(root), synthetic.libero_features(state_dtype=np.int32), int_state)
    tok = tokenizer
    stats = {k: ns.NormStats(np.zeros(8), np.ones(8), -np.ones(8), np.ones(8)) for k in ("state", "actions")}
    ns.save(stats, root / "stats.json")
    return dict(root=str(root), tok=tok, good=good)


def cfg_for(root, name, mapping="libero", **kw):
    base = dict(datasets=(DatasetSpec(name, root["root"], mapping),), batch_size=2, horizon=3, action_dim=8,
                image_size=16, max_token_len=24, tokenizer_path=root["tok"],
                norm_stats_path=root["root"] + "/stats.json", process_index=0, process_count=1)
    return DataConfig(**{**base, **kw})


def test_missing_feature_names_dataset_and_field(root):
    mapping = {"cameras": {"base_0_rgb": "observation/image"}, "state": "observation/joint_state", "actions": "action"}
    with pytest.raises(ValueError, match=r"'good'.*steps/observation/joint_state.*mapping\.state"):
        make_dataset(cfg_for(root, "good", mapping))


def test_wrong_dtype_is_rejected_before_reading(root):
    with pytest.raises(ValueError, match=r"'int_state'.*steps/observation/state.*float.*int32"):
        make_dataset(cfg_for(root, "int_state"))


def test_too_many_dims_for_the_model(root):
    with pytest.raises(ValueError, match=r"state has 8 dims, more than the model's data.action_dim=6"):
        make_dataset(cfg_for(root, "good", action_dim=6))


def test_nan_episode_raises_naming_episode_and_field(root):
    it = make_dataset(cfg_for(root, "has_nan"), train=False)
    with pytest.raises(ValueError,
                       match=r"episode 'has_nan-train.*episode_7\.hdf5.*field 'actions'.*NaN.*step 2, dim 3"):
        list(it)


def test_empty_episode_raises_naming_episode(root):
    with pytest.raises(ValueError,
                       match=r"episode 'has_empty-train.*empty\.hdf5.*empty episode \(0 steps\).*skip_bad_episodes"):
        list(make_dataset(cfg_for(root, "has_empty"), train=False))


def test_bad_episodes_skipped_and_counted_when_configured(root):
    it = make_dataset(cfg_for(root, "bad", skip_bad_episodes=True), train=False)
    frames = sum(b["state"].shape[0] for b in it)
    assert frames == 4 + 6  # only the two good episodes
    assert it.num_skipped_episodes == 2
    assert it.skipped_by_reason == {"nan": 1, "empty": 1}
    batches = make_dataset(cfg_for(root, "bad", skip_bad_episodes=True), False)
    assert all(np.isfinite(b["actions"]).all() for b in batches)


def test_unknown_config_field_is_rejected(root):
    with pytest.raises(ValueError, match="data.batchsize: unknown field"):
        DataConfig.from_any({"datasets": [{"name": "good"}], "batchsize": 3})


def test_norm_stats_file_format_and_numpy_equality(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 5)).astype(np.float32) * 3 + 1
    s = ns.compute(x)
    path = ns.save({"state": s, "actions": s}, tmp_path / "norm_stats.json")
    raw = json.loads(path.read_text())
    assert list(raw) == ["norm_stats"] and set(raw["norm_stats"]) == {"state", "actions"}
    assert set(raw["norm_stats"]["state"]) == {"mean", "std", "q01", "q99"}
    loaded = ns.load(tmp_path)["state"]
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(loaded.mean, x64.mean(0))
    np.testing.assert_array_equal(loaded.std, x64.std(0))
    np.testing.assert_array_equal(loaded.q01, np.quantile(x64, 0.01, axis=0))
    np.testing.assert_array_equal(loaded.q99, np.quantile(x64, 0.99, axis=0))


def test_normalisation_formulas_and_inverse():
    s = ns.NormStats(mean=np.array([1.0, -2.0]), std=np.array([2.0, 0.5]), q01=np.array([0.0, -1.0]),
                     q99=np.array([4.0, 3.0]))
    x = np.array([[3.0, -1.0], [1.0, 3.0]], np.float32)
    np.testing.assert_allclose(ns.normalize(x, s, False), (x - s.mean) / (s.std + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(ns.normalize(x, s, True), [[0.5, -1.0], [-0.5, 1.0]], atol=1e-5)
    for q in (False, True):
        np.testing.assert_allclose(ns.unnormalize(ns.normalize(x, s, q), s, q), x, atol=1e-5)
    long = ns.NormStats(*(np.concatenate([a, np.zeros(30)]) for a in (s.mean, s.std, s.q01, s.q99)))
    np.testing.assert_allclose(ns.normalize(x, long, True), ns.normalize(x, s, True))  # openpi slices
    with pytest.raises(ValueError, match="the data has 3 dims but the stats only 2"):
        ns.normalize(np.zeros((1, 3), np.float32), s, False)


def test_cli_matches_numpy_on_action_chunks(root, tmp_path):
    out = tmp_path / "libero" / "norm_stats.json"
    cli.main(["--data-dir", root["root"], "--dataset", "good", "--mapping", "libero", "--horizon", "3",
              "--delta-action-mask", "2,-5", "--out", str(out), "--no-progress"])
    mask = np.array([True, True] + [False] * 5)
    states, rows = [], []
    for ep in root["good"]:
        st = np.stack([s["observation"]["state"] for s in ep["steps"]])
        act = np.stack([s["action"] for s in ep["steps"]])
        idx = np.minimum(np.arange(len(st))[:, None] + np.arange(3)[None], len(st) - 1)
        chunks = act[idx] - np.where(mask, st[:, :7], 0)[:, None, :]
        states.append(st)
        rows.append(chunks.reshape(-1, 7))
    got = ns.load(out)
    for key, data in (("state", np.concatenate(states)), ("actions", np.concatenate(rows))):
        d = data.astype(np.float64)
        for field, want in (("mean", d.mean(0)), ("std", d.std(0)), ("q01", np.quantile(d, 0.01, 0)),
                            ("q99", np.quantile(d, 0.99, 0))):
            np.testing.assert_allclose(getattr(got[key], field), want, rtol=1e-12, atol=1e-12, err_msg=f"{key}.{field}")
    assert not list(tmp_path.glob("libero/.norm_stats.*"))  # no temp file left behind


def test_cli_requires_inputs():
    with pytest.raises(SystemExit):
        cli.parse_args(["--dataset", "x"])
