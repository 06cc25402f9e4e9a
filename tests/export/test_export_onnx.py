"""ONNX export: onnxruntime against PyTorch (and the JAX fixtures), both graph layouts, dynamic batch."""
import functools
import pathlib

import numpy as np
import onnx
import pytest

from shallow_pi_jax import export_onnx, export_torch
from shallow_pi_jax.checkpoint import openpi_params
from shallow_pi_jax.export import convert, onnx_export
from shallow_pi_jax.export import torch_model as tm
from shallow_pi_jax.export.onnx_policy import OnnxPolicy
from shallow_pi_jax.models.config import ModelConfig

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
    files = onnx_export.export_onnx(model, tmp_path / "pi05.onnx", mode="split")
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
    files = onnx_export.export_onnx(model, tmp_path / "student.onnx", mode="single", num_steps=3,
                                    external_data="always")
    assert [f.name for f in files] == ["student.onnx", "student.onnx.data"]
    m = onnx.load(str(files[0]), load_external_data=False)
    external = [t for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) > 100  # every weight matrix lives in the one .data file
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {"student.onnx.data"}
    meta = onnx_export.read_metadata(files[0])
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
