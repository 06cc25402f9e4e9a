"""Export a PyTorch policy directory (from shallow_pi_jax.export_torch) to ONNX and check it with onnxruntime.

    python -m shallow_pi_jax.export_onnx --torch DIR --out model.onnx                  # one graph, 10 steps unrolled
    python -m shallow_pi_jax.export_onnx --torch DIR --out model.onnx \\
        --mode split  # model_prefix.onnx + model_step.onnx
    python -m shallow_pi_jax.export_onnx --torch DIR --out model.onnx --num-steps 5 --verify-batch 2

Graphs are float32, opset >= 17, dynamic batch; graphs over 2 GB keep their weights in one
`<name>.onnx.data` file next to them. Unless --no-verify, onnxruntime runs the graph(s) on a random
observation and the result is compared with PyTorch's sample_actions (same noise); a difference over
--tol (default 1e-4) is an error and the files are removed. See docs/export.md for the layouts.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from shallow_pi_jax.export.onnx_export import example_observation, export_onnx
from shallow_pi_jax.export.onnx_policy import OnnxPolicy
from shallow_pi_jax.export.torch_model import load_pretrained


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--torch", required=True, help="directory written by shallow_pi_jax.export_torch")
    p.add_argument("--out", required=True, help="output .onnx path (split mode adds _prefix / _step)")
    p.add_argument("--mode", default="single", choices=("single", "split"),
                   help="single: one graph with the loop unrolled (default); split: prefix + step graphs")
    p.add_argument("--num-steps", type=int, default=10, help="Euler steps (fixed in the single graph; default 10)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default 17)")
    p.add_argument("--external-data", default="auto", choices=("auto", "always", "never"),
                   help="weights in a .onnx.data file: auto = only over 2 GB (default)")
    p.add_argument("--verify-batch", type=int, default=2, help="batch of the onnxruntime check (default 2)")
    p.add_argument("--tol", type=float, default=1e-4, help="max |onnxruntime - PyTorch| on actions (default 1e-4)")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check")
    return p.parse_args(argv)


def verify(model, files, batch: int, num_steps: int, tol: float) -> float:


    obs = example_observation(model, batch, seed=1)
    c = model.config
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

    model = load_pretrained(args.torch, dtype="float32")
    c = model.config
    print(f"{'π0.5' if c.pi05 else 'π0'} depth {c.depth}: exporting {args.mode} graph(s), {args.num_steps} steps")
    t0 = time.perf_counter()
    files = export_onnx(model, args.out, mode=args.mode, num_steps=args.num_steps, opset=args.opset,
                        external_data=args.external_data)
    print(f"exported in {time.perf_counter() - t0:.1f} s: " + ", ".join(
        f"{f.name} ({f.stat().st_size / 2**20:.1f} MiB)" for f in files))
    if not args.no_verify:
        try:
            err = verify(model, files, args.verify_batch, args.num_steps, args.tol)
        except BaseException:
            for f in files:
                f.unlink(missing_ok=True)
            raise
        print(f"onnxruntime vs PyTorch sample_actions (batch {args.verify_batch}): "
              f"max |diff| {err:.2e} <= {args.tol:g}")
    return files


if __name__ == "__main__":
    main()
