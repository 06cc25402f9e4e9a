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
import pathlib
import sys

from shallow_pi_jax import cli


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


def main(argv=None):
    args = parse_args(argv)
    out = pathlib.Path(args.out).expanduser().absolute()
    if out.suffix != ".onnx":
        raise cli.UsageError(f"--out: expected a path ending in .onnx, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"--out: {out} is a directory; expected a .onnx file path")
    cameras = None if args.cameras is None else tuple(k.strip() for k in args.cameras.split(",") if k.strip())
    if cameras is not None and args.full_prefix:
        raise cli.UsageError("--cameras: a --full-prefix graph reads every camera; pass one of the two")
    # Imported once the flags are parsed, so that --help answers without loading JAX or PyTorch.
    from shallow_pi_jax.export.policy_onnx import export_policy_onnx

    return export_policy_onnx(args.source, out, mode=args.mode, num_steps=args.num_steps, cameras=cameras,
                              full_prefix=args.full_prefix, opset=args.opset, external_data=args.external_data,
                              check=not args.no_verify, verify_batch=args.verify_batch, tol=args.tol,
                              action_horizon=args.action_horizon, max_token_len=args.max_token_len,
                              verify=not args.no_checksums)


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
