r"""Training cost of distillation: the fused KD step against a plain student step, and the real-size
step's compiled memory per device on 8 / 16 / 32-device meshes.

    python -m shallow_pi_jax.bench_train                                   # both parts, defaults below
    python -m shallow_pi_jax.bench_train --skip-memory --repeats 20        # only the side-by-side timing
    python -m shallow_pi_jax.bench_train --skip-timing --devices 8,16,32 --global-batch 64 --json bench_train.json

1. Timing, at one small size (--small, default experiments/l6.py:demo, batch 16, one CPU device):
   both steps are built by the trainer's code (same student, optimizer, batch), compiled, warmed up
   and then run alternately (--repeats each), so machine load hits both alike; prints the median
   times, their ratio, and next to it the FLOP ratio XLA predicts (cost analysis of both programs
   with their layer scans unrolled; XLA counts a loop body once otherwise).
2. Memory, at real size (--config, default experiments/l6.py: π0.5 18 → 6 layers, bf16 teacher):
   the fused step is compiled (never run: abstract inputs, no weights) on simulated CPU meshes of
   --devices devices (data=1, fsdp=all, as the trainer's default) at --global-batch, and XLA's
   per-device memory is printed. A real-size CPU compile takes minutes on a small host.
"""
from __future__ import annotations

import argparse
import os
import sys

MAX_DEVICES = 32
# Simulated devices must be configured before jax starts.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={MAX_DEVICES}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from shallow_pi_jax import cli  # noqa: E402


def parse_args(argv=None):
    doc = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(description=doc[0], epilog="\n\n".join(doc[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", default="experiments/l6.py:demo",
                    help="config of the timing part (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=None, help="batch of the timing part (default: the small config's)")
    ap.add_argument("--repeats", type=int, default=10, help="timed runs of each step (default: %(default)s)")
    ap.add_argument("--config", default="experiments/l6.py",
                    help="real-size config of the memory part (default: %(default)s)")
    ap.add_argument("--devices", default="8,16,32",
                    help=f"simulated mesh sizes, at most {MAX_DEVICES} (default: %(default)s)")
    ap.add_argument("--global-batch", type=int, default=64,
                    help="global batch of the memory part (default: %(default)s)")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    return cli.parse(ap, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # Imported once the flags are parsed, so that --help answers without loading JAX.
    from shallow_pi_jax.perf.train_cost import bench_train

    bench_train(args)
    return 0


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
