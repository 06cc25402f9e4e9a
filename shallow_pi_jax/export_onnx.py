"""Export a policy to ONNX and check it with onnxruntime.

    python -m shallow_pi_jax.export_onnx --torch DIR --out model.onnx                  # one graph, 10 steps unrolled
    python -m shallow_pi_jax.export_onnx --checkpoint runs/l6 --out model.onnx         # straight from a policy dir
    python -m shallow_pi_jax.export_onnx --torch DIR --out model.onnx \\
        --mode split  # model_prefix.onnx + model_step.onnx
    python -m shallow_pi_jax.export_onnx --torch DIR --out model.onnx --num-steps 5 --verify-batch 2
    python -m shallow_pi_jax.export_onnx --torch DIR --out libero.onnx --cameras base_0_rgb,left_wrist_0_rgb
    python -m shallow_pi_jax.export_onnx --torch DIR --out model.onnx --full-prefix   # openpi's prefix

The source (--torch, --checkpoint and --params are one flag) is a PyTorch export written by
shallow_pi_jax.export_torch, or any policy directory (a training run's --workdir, a student
directory, an openpi checkpoint or its params/), converted to PyTorch in memory (float32).
Graphs are float32, opset >= 17, dynamic batch; graphs over 2 GB keep their weights in one
`<name>.onnx.data` file next to them. Unless --no-verify, onnxruntime runs the graph(s) on a random
observation and the result is compared with PyTorch's sample_actions (same noise); a difference over
--tol (default 1e-4) is an error. The graphs are written and checked in a hidden temporary
directory and moved into place only when they pass. See docs/export.md for the layouts.

Prefix: by default the graph reads only --cameras (default: those the source's policy_record.json
has the robot send, e.g. LIBERO's base_0_rgb,left_wrist_0_rgb; all of the model's without a record;
leaving out one the record names is an error) and its prompt axis is dynamic: the runners cut each batch's prompt to
the smallest of the 32/64/128/max buckets that holds its longest prompt (exact: padding is never
attended). --full-prefix exports openpi's prefix (every camera, the whole padded prompt) instead.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch

from shallow_pi_jax import cli
from shallow_pi_jax.checkpoint import policy_dir, policy_record
from shallow_pi_jax.checkpoint.layer_reader import ParamsReader
from shallow_pi_jax.export.convert import convert_params
from shallow_pi_jax.export.onnx_export import example_observation, export_onnx
from shallow_pi_jax.export.onnx_policy import OnnxPolicy
from shallow_pi_jax.export.torch_model import Pi0Torch, load_pretrained, load_state

TORCH_WEIGHTS = "model.safetensors"  # what marks a directory written by export_torch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch", "--checkpoint", "--params", dest="source", required=True,
                   help="a directory written by shallow_pi_jax.export_torch, or any policy directory")
    p.add_argument("--out", required=True, help="output .onnx path (split mode adds _prefix / _step)")
    p.add_argument("--mode", default="single", choices=("single", "split"),
                   help="single: one graph with the loop unrolled (default); split: prefix + step graphs")
    p.add_argument("--num-steps", type=int, default=10, help="Euler steps (fixed in the single graph; default 10)")
    p.add_argument("--cameras", default=None,
                   help="comma-separated cameras the graph reads, in the model's order (default: all); "
                        "a batch with another camera valid is refused at run time")
    p.add_argument("--full-prefix", action="store_true",
                   help="openpi's prefix: every camera, the whole padded prompt (no dynamic prompt axis)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default 17)")
    p.add_argument("--external-data", default="auto", choices=("auto", "always", "never"),
                   help="weights in a .onnx.data file: auto = only over 2 GB (default)")
    p.add_argument("--verify-batch", type=int, default=2, help="batch of the onnxruntime check (default 2)")
    p.add_argument("--tol", type=float, default=1e-4, help="max |onnxruntime - PyTorch| on actions (default 1e-4)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    p.add_argument("--no-checksums", action="store_true",
                   help="skip checking the checkpoint's files against its checksums.json (faster on huge checkpoints)")
    p.add_argument("--action-horizon", type=int,
                   help="actions per chunk, for an openpi checkpoint (policy directories of ours record it)")
    p.add_argument("--max-token-len", type=int, help="prompt tokens, for an openpi checkpoint")
    return cli.parse(p, argv)


def load_model(args) -> Pi0Torch:
    """The float32 PyTorch model of a PyTorch export, or of a policy directory converted in memory."""
    src = pathlib.Path(args.source).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"--torch: {src} does not exist")
    if (src / TORCH_WEIGHTS).is_file():
        return load_pretrained(src, dtype="float32")
    pd = policy_dir.read(cli.policy_path(src), verify=not args.no_checksums)
    cfg = pd.model_config(action_horizon=args.action_horizon, max_token_len=args.max_token_len)
    reader = ParamsReader(pd.params_dir, verify=not args.no_checksums)
    tensors = convert_params(reader.read, cfg, torch.float32, shapes=pd.shapes)
    return load_state(Pi0Torch(cfg), tensors, str(pd.params_dir)).eval().requires_grad_(False)


def source_record(args) -> policy_record.PolicyRecord | None:
    """The source's policy_record.json (an export_torch directory keeps its checkpoint's); None if it has none."""
    src = pathlib.Path(args.source).expanduser()
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


def verify(model, files, batch: int, num_steps: int, tol: float, cameras=None) -> float:
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


def main(argv=None):
    args = parse_args(argv)
    out = pathlib.Path(args.out).expanduser().absolute()
    if out.suffix != ".onnx":
        raise cli.UsageError(f"--out: expected a path ending in .onnx, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"--out: {out} is a directory; expected a .onnx file path")
    model = load_model(args)
    c = model.config
    cameras = None if args.cameras is None else tuple(k.strip() for k in args.cameras.split(",") if k.strip())
    if cameras is not None and args.full_prefix:
        raise cli.UsageError("--cameras: a --full-prefix graph reads every camera; pass one of the two")
    cameras = graph_cameras(cameras, source_record(args), args.full_prefix)
    prefix = ("openpi's full prefix" if args.full_prefix
              else f"compacted prefix, cameras {list(cameras or c.image_keys)}")
    print(f"{'π0.5' if c.pi05 else 'π0'} depth {c.depth}: exporting {args.mode} graph(s), {args.num_steps} steps, "
          f"{prefix}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written and verified beside --out, moved into place only once they pass: a failed export or
    # check leaves earlier files as they were. A graph finds its .onnx.data by file name, so the
    # files move together.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.", suffix=".tmp") as tmp:
        t0 = time.perf_counter()
        staged = export_onnx(model, pathlib.Path(tmp) / out.name, mode=args.mode, num_steps=args.num_steps,
                             opset=args.opset, external_data=args.external_data,
                             prefix="full" if args.full_prefix else "compact", cameras=cameras)
        print(f"exported in {time.perf_counter() - t0:.1f} s: " + ", ".join(
            f"{out.parent / f.name} ({f.stat().st_size / 2**20:.1f} MiB)" for f in staged))
        if not args.no_verify:
            err = verify(model, staged, args.verify_batch, args.num_steps, args.tol, cameras)
            print(f"onnxruntime vs PyTorch sample_actions (batch {args.verify_batch}): "
                  f"max |diff| {err:.2e} <= {args.tol:g}")
        # Weights first, graphs last: a graph in place always finds its data.
        for f in sorted(staged, key=lambda f: f.suffix == ".onnx"):
            os.replace(f, out.parent / f.name)
    return [out.parent / f.name for f in staged]


if __name__ == "__main__":
    sys.exit(cli.run(main))
