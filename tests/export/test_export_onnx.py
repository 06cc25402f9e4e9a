"""ONNX export: onnxruntime against PyTorch (and the JAX fixtures), both graph layouts, dynamic batch."""
import functools
import pathlib

import jax
import numpy as np
import onnx
import pytest

from shallow_pi_jax import export_onnx, export_torch
from shallow_pi_jax.checkpoint import openpi_params
from shallow_pi_jax.export import convert, onnx_graph
from shallow_pi_jax.export import torch_model as tm
from shallow_pi_jax.export.onnx_policy import OnnxPolicy
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.pi0 import Pi0, compacted
from shallow_pi_jax.serve.testing import random_params, tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.torch]

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "tests/fixtures/openpi_tiny"


@functools.cache
def fixture(variant, depth_layers=None):
    fx = FIX / variant
    cfg = ModelConfig.from_fixture(fx / "config.json")
    flat = openpi_params.flatten_params(openpi_params.restore_params(fx / "params"))
    if depth_layers is not None:
        from shallow_pi_jax.training.student_init import student_params
        flat = openpi_params.flatten_params(student_params(openpi_params.unflatten_params(flat), list(depth_layers)))
        cfg = cfg.with_depth(len(depth_layers))
    model = tm.load_state(tm.Pi0Torch(cfg), convert.convert_params(flat, cfg)).eval().requires_grad_(False)
    io = np.load(fx / "io.npz")
    obs = {"images": {k: io[f"images.{k}"] for k in cfg.image_keys},
           "image_masks": {k: io[f"image_masks.{k}"] for k in cfg.image_keys},
           "state": io["state"], "tokenized_prompt": io["tokenized_prompt"],
           "tokenized_prompt_mask": io["tokenized_prompt_mask"]}
    return model, io, obs


def _take(obs, idx):
    return {k: ({c: x[idx] for c, x in v.items()} if isinstance(v, dict) else v[idx]) for k, v in obs.items()}


def test_split_graphs_match_jax_fixture_and_torch(tmp_path):
    model, io, obs = fixture("pi05")
    files = onnx_graph.export_onnx(model, tmp_path / "pi05.onnx", mode="split")
    assert [f.name for f in files] == ["pi05_prefix.onnx", "pi05_step.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pi05_prefix.onnx", "pi05_step.onnx"]  # no scratch left
    for f in files:
        m = onnx.load(str(f))
        onnx.checker.check_model(m)
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    policy = OnnxPolicy(files[0])
    step_inputs = [i.name for i in policy.step.get_inputs()]
    assert "state" not in step_inputs  # π0.5 does not read the state
    noise = io["sample_noise"]
    got = policy.infer(obs, noise=noise)["actions"]
    assert np.abs(got - io["sample_actions"]).max() <= 1e-4
    assert np.abs(got - model.sample_actions(obs, noise=noise).numpy()).max() <= 1e-4
    # dynamic batch: batch 1 and 3 (the traced example had batch 2)
    one = policy.infer(_take(obs, slice(0, 1)), noise=noise[:1])["actions"]
    assert np.abs(one - got[:1]).max() <= 1e-5
    three = policy.infer(_take(obs, [0, 1, 0]), noise=noise[[0, 1, 0]])["actions"]
    assert np.abs(three - got[[0, 1, 0]]).max() <= 1e-5


def test_student_single_graph_with_external_data(tmp_path):
    model, io, obs = fixture("pi05", (0, 3, 7, 10, 14, 17))
    files = onnx_graph.export_onnx(model, tmp_path / "student.onnx", mode="single", num_steps=3,
                                    external_data="always")
    assert [f.name for f in files] == ["student.onnx", "student.onnx.data"]
    m = onnx.load(str(files[0]), load_external_data=False)
    external = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) > 100  # every weight matrix lives in the one .data file
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"student.onnx.data"}
    meta = onnx_graph.read_metadata(files[0])
    assert (meta["mode"], meta["num_steps"], meta["model"]["llm"]["depth"]) == ("single", 3, 6)
    policy = OnnxPolicy(files[0])
    noise = io["sample_noise"]
    want = model.sample_actions(obs, noise=noise, num_steps=3).numpy()
    got = policy.infer(obs, noise=noise)["actions"]
    assert np.abs(got - want).max() <= 1e-4
    one = policy.infer(_take(obs, slice(1, 2)), noise=noise[1:2])["actions"]
    assert np.abs(one - want[1:2]).max() <= 1e-4
    with pytest.raises(ValueError, match="exported with 3 steps"):
        policy.infer(obs, noise=noise, num_steps=5)
    with pytest.raises(ValueError, match="noise: expected shape"):
        policy.infer(obs, noise=noise[:, :3])


def test_export_onnx_cli(tmp_path):

    out = tmp_path / "torch"
    export_torch.main(["--params", str(FIX / "pi0/params"), "--out", str(out), "--action-horizon", "10",
                       "--max-token-len", "48"])
    with pytest.raises(ValueError, match="opset"):
        export_onnx.main(["--torch", str(out), "--out", str(tmp_path / "m.onnx"), "--opset", "16"])
    files = export_onnx.main(["--torch", str(out), "--out", str(tmp_path / "onnx" / "m.onnx"), "--mode", "split",
                              "--num-steps", "3", "--verify-batch", "1"])
    assert [f.name for f in files] == ["m_prefix.onnx", "m_step.onnx"]
    # LIBERO's cameras only; checked against PyTorch on a batch with the third camera masked.
    files = export_onnx.main(["--torch", str(out), "--out", str(tmp_path / "libero" / "m.onnx"), "--num-steps", "2",
                              "--verify-batch", "1", "--cameras", "base_0_rgb, left_wrist_0_rgb"])
    meta = onnx_graph.read_metadata(files[0])
    assert (meta["prefix"], meta["cameras"]) == ("compact", ["base_0_rgb", "left_wrist_0_rgb"])
    with pytest.raises(ValueError, match="--cameras"):
        export_onnx.main(["--torch", str(out), "--out", str(tmp_path / "x.onnx"), "--full-prefix",
                          "--cameras", "base_0_rgb"])


BASE, LEFT, RIGHT = "base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"


def _compact_batch(cfg, prompt_lens, seed):
    """LIBERO-like: right wrist masked everywhere, left wrist masked for the last example only,
    prompts of `prompt_lens` valid tokens; masked pixels and padding tokens are random."""
    g = np.random.default_rng(seed)
    b = len(prompt_lens)
    obs = {"images": {k: g.uniform(-1, 1, (b, *cfg.image_size, 3)).astype(np.float32) for k in cfg.image_keys},
           "image_masks": {BASE: np.ones(b, bool), LEFT: np.arange(b) < b - 1, RIGHT: np.zeros(b, bool)},
           "state": g.standard_normal((b, cfg.action_dim)).astype(np.float32),
           "tokenized_prompt": g.integers(1, cfg.vocab_size, (b, cfg.max_token_len)).astype(np.int32),
           "tokenized_prompt_mask": np.arange(cfg.max_token_len)[None] < np.asarray(prompt_lens)[:, None]}
    return obs, g.standard_normal((b, cfg.action_horizon, cfg.action_dim)).astype(np.float32)


def _rel_err(got, ref):
    return float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())))


def test_compact_graph_runs_the_bucketed_prefix_and_matches_jax(tmp_path):
    """LIBERO's graph (base + left wrist, dynamic prompt axis) fed at each bucket: the same actions as
    the JAX model with openpi's prefix and with the compacted one; the full-prefix flag still works."""
    cfg = tiny_config(depth=2, max_token_len=80)  # buckets 32, 64, 80
    params = random_params(cfg, seed=3)
    model = tm.load_state(tm.Pi0Torch(cfg), convert.convert_params(openpi_params.flatten_params(params), cfg))
    model = model.eval().requires_grad_(False)
    compact = OnnxPolicy(onnx_graph.export_onnx(model, tmp_path / "libero.onnx", num_steps=3,
                                                 cameras=(BASE, LEFT))[0])
    meta = compact.meta
    assert (meta["prefix"], meta["cameras"], meta["prompt_buckets"]) == ("compact", [BASE, LEFT], [32, 64, 80])
    inputs = {i.name: i.shape for i in compact.policy.get_inputs()}
    assert f"image_{RIGHT}" not in inputs and isinstance(inputs["tokenized_prompt"][1], str)  # dynamic axis
    full = OnnxPolicy(onnx_graph.export_onnx(model, tmp_path / "full.onnx", mode="split", num_steps=3,
                                              prefix="full")[0])
    assert full.meta["prefix"] == "full" and [i.shape[1] for i in full.prefix.get_inputs()
                                               if i.name == "tokenized_prompt"] == [80]

    def jax_actions(m, obs, noise):
        return np.asarray(jax.jit(lambda p, o, n: m.apply({"params": p}, None, o, num_steps=3, noise=n,
                                                          method=Pi0.sample_actions))(params, obs, noise))

    for lens, bucket in (([7, 20, 3], 32), ([7, 45, 20], 64), ([2, 80, 9], 80)):
        obs, noise = _compact_batch(cfg, lens, seed=bucket)
        assert compact.feed(obs)["tokenized_prompt"].shape == (3, bucket)
        assert full.feed(obs)["tokenized_prompt"].shape == (3, 80)
        ref = jax_actions(Pi0(cfg), obs, noise)
        ref_compact = jax_actions(compacted(cfg, obs), obs, noise)
        assert np.abs(ref).max() > 1e-2
        for policy in (compact, full):
            got = policy.infer(obs, noise=noise)["actions"]
            assert _rel_err(got, ref) <= 1e-5 and _rel_err(got, ref_compact) <= 1e-5, (lens, policy.prefix_kind)
    # A batch that sees the right wrist needs a graph that has it.
    obs["image_masks"][RIGHT][0] = True
    with pytest.raises(ValueError, match=r"cameras \['right_wrist_0_rgb'\] are valid.*exported with cameras"):
        compact.infer(obs, noise=noise)
    assert full.infer(obs, noise=noise)["actions"].shape == noise.shape
    with pytest.raises(ValueError, match="cameras: expected a non-empty subset"):
        onnx_graph.export_onnx(model, tmp_path / "bad.onnx", cameras=(LEFT, BASE))
    with pytest.raises(ValueError, match="full-prefix graph reads every camera"):
        onnx_graph.export_onnx(model, tmp_path / "bad.onnx", prefix="full", cameras=(BASE,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full_prefix.onnx", "full_step.onnx", "libero.onnx"]
