"""A policy as ONNX graphs checked with onnxruntime: `export_onnx`'s work.

    export_policy_onnx("export/pi05_l6", pathlib.Path("model.onnx"))       # a PyTorch export or a policy dir

The graphs are written and checked in a hidden temporary directory beside `out` and moved into
place only when they pass. onnx_graph.py builds the graphs; the command's help
(python -m shallow_pi_jax.export_onnx --help) describes the layouts and the prefix.
"""
from __future__ import annotations

import os
import pathlib
import tempfile
import time

import numpy as np
import torch

from shallow_pi_jax import cli
from shallow_pi_jax.checkpoint import policy_dir, policy_record
from shallow_pi_jax.checkpoint.layer_reader import ParamsReader
from shallow_pi_jax.export.convert import convert_params
from shallow_pi_jax.export.onnx_graph import example_observation, export_onnx
from shallow_pi_jax.export.onnx_policy import OnnxPolicy
from shallow_pi_jax.export.torch_model import Pi0Torch, load_pretrained, load_state

TORCH_WEIGHTS = "model.safetensors"  # what marks a directory written by export_torch


def load_model(source, action_horizon: int | None = None, max_token_len: int | None = None,
               verify: bool = True) -> Pi0Torch:
    """The float32 PyTorch model of a PyTorch export, or of a policy directory converted in memory
    (`action_horizon` / `max_token_len` for an openpi checkpoint; `verify`: its checksums)."""
    src = pathlib.Path(source).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"--torch: {src} does not exist")
    if (src / TORCH_WEIGHTS).is_file():
        return load_pretrained(src, dtype="float32")
    pd = policy_dir.read(cli.policy_path(src), verify=verify)
    cfg = pd.model_config(action_horizon=action_horizon, max_token_len=max_token_len)
    reader = ParamsReader(pd.params_dir, verify=verify)
    tensors = convert_params(reader.read, cfg, torch.float32, shapes=pd.shapes)
    return load_state(Pi0Torch(cfg), tensors, str(pd.params_dir)).eval().requires_grad_(False)


def source_record(source) -> policy_record.PolicyRecord | None:
    """The source's policy_record.json (an export_torch directory keeps its checkpoint's); None if it has none."""
    src = pathlib.Path(source).expanduser()
    if (src / TORCH_WEIGHTS).is_file():
        return policy_record.read(src)
    return policy_dir.read(cli.policy_path(src), verify=False).record  # load_model has verified it


def graph_cameras(cameras, record: policy_record.PolicyRecord | None, full_prefix: bool):
    """--cameras, by default the cameras the record has the robot send; one the robot sends left out is an error."""
    if record is None or full_prefix:
        return cameras
    if cameras is None:
        return record.present_cameras if record.masked_cameras else None
    left_out = [c for c in record.present_cameras if c not in cameras]
    if left_out:
        raise cli.UsageError(f"--cameras: the policy record has the robot send {list(record.present_cameras)}, "
                             f"--cameras {list(cameras)} leaves out {left_out}")
    return cameras


def verify_graphs(model, files, batch: int, num_steps: int, tol: float, cameras=None) -> float:
    obs = example_observation(model, batch, seed=1)
    c = model.config
    # Cameras left out of the graph are masked, as the robot that uses it sends them.
    obs["image_masks"] = {k: np.full(batch, cameras is None or k in cameras) for k in c.image_keys}
    noise = np.random.default_rng(2).standard_normal((batch, c.action_horizon, c.action_dim)).astype(np.float32)
    with torch.no_grad():
        want = model.sample_actions(obs, noise=noise, num_steps=num_steps).numpy()
    got = OnnxPolicy(files[0]).infer(obs, noise=noise)["actions"]
    err = float(np.abs(got - want).max())
    if not err <= tol:
        raise ValueError(f"onnxruntime vs PyTorch: max |diff| {err:.3g} > tol {tol:g}")
    return err


def export_policy_onnx(source, out: pathlib.Path, *, mode: str = "single", num_steps: int = 10,
                       cameras: tuple[str, ...] | None = None, full_prefix: bool = False, opset: int = 17,
                       external_data: str = "auto", check: bool = True, verify_batch: int = 2, tol: float = 1e-4,
                       action_horizon: int | None = None, max_token_len: int | None = None,
                       verify: bool = True) -> list[pathlib.Path]:
    """Export `source` (load_model) to `out` (.onnx; split mode adds _prefix / _step) and, with
    `check`, compare onnxruntime's actions with PyTorch's (max |diff| <= `tol`). Returns the files."""
    model = load_model(source, action_horizon, max_token_len, verify)
    c = model.config
    cameras = graph_cameras(cameras, source_record(source), full_prefix)
    prefix = "openpi's full prefix" if full_prefix else f"compacted prefix, cameras {list(cameras or c.image_keys)}"
    print(f"{'π0.5' if c.pi05 else 'π0'} depth {c.depth}: exporting {mode} graph(s), {num_steps} steps, {prefix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written and verified beside --out, moved into place only once they pass: a failed export or
    # check leaves earlier files as they were. A graph finds its .onnx.data by file name, so the
    # files move together.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.", suffix=".tmp") as tmp:
        t0 = time.perf_counter()
        staged = export_onnx(model, pathlib.Path(tmp) / out.name, mode=mode, num_steps=num_steps, opset=opset,
                             external_data=external_data, prefix="full" if full_prefix else "compact", cameras=cameras)
        print(f"exported in {time.perf_counter() - t0:.1f} s: " + ", ".join(
            f"{out.parent / f.name} ({f.stat().st_size / 2**20:.1f} MiB)" for f in staged))
        if check:
            err = verify_graphs(model, staged, verify_batch, num_steps, tol, cameras)
            print(f"onnxruntime vs PyTorch sample_actions (batch {verify_batch}): max |diff| {err:.2e} <= {tol:g}")
        # Weights first, graphs last: a graph in place always finds its data.
        for f in sorted(staged, key=lambda f: f.suffix == ".onnx"):
            os.replace(f, out.parent / f.name)
    return [out.parent / f.name for f in staged]
