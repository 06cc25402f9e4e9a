"""CPU latency of teacher vs student: PyTorch eager and onnxruntime, side by side in one run.

    python -m shallow_pi_jax.bench_export                                  # small default size, 18 vs 6 layers
    python -m shallow_pi_jax.bench_export --size fixture --batch 1 --repeats 5
    python -m shallow_pi_jax.bench_export --width 256 --expert-width 128 --mlp-dim 1024 --prompt 48 \\
        --layers 0,3,7,10,14,17

Random weights at the chosen size (latency does not depend on their values). Both models run in the
same process, alternating teacher / student per repeat so machine load hits both alike; the table
reports the median of `--repeats` runs of sample_actions (prefix + `--num-steps` Euler steps) and
the teacher/student ratio. onnxruntime runs the "single" (unrolled) and "split" layouts.
"""
from __future__ import annotations

import argparse
import sys

from shallow_pi_jax import cli


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small", choices=("small", "fixture"),
                   help="small: width 256/128, 224px images (default); fixture: the tiny openpi fixture sizes")
    p.add_argument("--width", type=int, help="backbone width (overrides --size)")
    p.add_argument("--expert-width", type=int, help="action expert width")
    p.add_argument("--mlp-dim", type=int, help="backbone MLP width (expert: a quarter)")
    p.add_argument("--prompt", type=int, default=48, help="prompt tokens (default 48)")
    p.add_argument("--pi05", action="store_true", help="π0.5 (default π0)")
    p.add_argument("--teacher-depth", type=int, default=18)
    p.add_argument("--layers", default="0,3,7,10,14,17", help="student's teacher layers (default the L6 map)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--num-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch / onnxruntime threads (0: library default)")
    p.add_argument("--onnx-modes", default="single,split", help="onnxruntime layouts to time (default single,split)")
    p.add_argument("--no-onnx", action="store_true", help="PyTorch only")
    return cli.parse(p, argv)


def main(argv=None):
    args = parse_args(argv)
    # Imported once the flags are parsed, so that --help answers without loading PyTorch.
    from shallow_pi_jax.export.latency import bench_export

    return bench_export(args)


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
