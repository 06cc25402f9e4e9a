r"""Pre-flight check for TPU pod slices: compile the real training step for a named TPU topology on
any machine (no TPU, no weights, no data) and report per-chip memory, FLOPs and XLA's time estimate.

    pip install -e .[tpu]                      # libtpu pinned to our jax; its compiler runs on CPU hosts
    python -m shallow_pi_jax.aot_compile --config experiments/l6.py --topology v5e:4x4
    python -m shallow_pi_jax.aot_compile --config experiments/l6.py --topology v5e:2x4 --global-batch 64 \
        --mesh data=1,fsdp=8
    python -m shallow_pi_jax.aot_compile --config experiments/l6.py --topology v4:2x2x2 --steps kd --no-estimate
    python -m shallow_pi_jax.aot_compile --config experiments/l6.py --inference --topology v5e:1x1  # teacher vs student
    python -m shallow_pi_jax.aot_compile --config experiments/l6.py:tiny --topology v5e:2x2  # seconds, a smoke test

For each step (the fused distillation step and the plain student step, built by the trainer's own
code: same models, optimizer, mesh and shardings), prints per chip: argument / output / temporary /
generated-code bytes and their total against the chip's HBM, FLOPs per step, XLA's estimated step
time, the implied samples/s and MFU at the chip's peak bf16 throughput. Exits with status 2 when a
step does not fit, naming what would.

The time estimate needs a few extra compiles of a 1–3 layer unrolled copy of the model (XLA counts
a loop body once; see shallow_pi_jax/aot.py); --no-estimate skips them. A real-size compile takes
minutes on a small CPU host.
"""
from __future__ import annotations

import argparse
import sys

from shallow_pi_jax import cli
from shallow_pi_jax.training import recipes


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--config", required=True,
                    help="experiment config, e.g. experiments/l6.py or experiments/l6.py:tiny")
    ap.add_argument("--topology", default="v5e:4x4",
                    help="TPU slice: <v4|v5e|v5p|v6e>:<AxB[xC]> (default: %(default)s)")
    ap.add_argument("--global-batch", type=int, default=None, help="global batch (default: the config's batch_size)")
    ap.add_argument("--mesh", default=None,
                    help="mesh sizes, e.g. data=2,fsdp=8; -1 = the rest (default: the config's)")
    ap.add_argument("--remat", choices=("config", "on", "off"), default="config",
                    help="rematerialise each layer in the backward pass (default: as the config says)")
    ap.add_argument("--steps", default="kd,plain", help="which train steps: kd, plain or both (default: %(default)s)")
    ap.add_argument("--inference", action="store_true",
                    help="instead of training, compile teacher and student sample_actions (batch 1) for one chip "
                         "of the topology's generation")
    ap.add_argument("--num-steps", type=int, default=10, help="denoising steps for --inference (default: %(default)s)")
    ap.add_argument("--no-estimate", action="store_true", help="skip the extra compiles behind FLOPs/time/MFU")
    ap.add_argument("--json", default=None, help="also write the reports to this JSON file")
    return cli.parse(ap, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    config = recipes.load(args.config)
    if args.remat != "config":
        config.remat = args.remat == "on"
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = set(steps) - {"kd", "plain"}
    if bad or not steps:
        raise cli.UsageError(f"--steps: expected a comma-separated subset of kd,plain, got {args.steps!r}")
    if args.num_steps < 1:
        raise cli.UsageError(f"--num-steps: expected >= 1, got {args.num_steps}")
    # Imported once the flags are parsed, so that --help answers without loading JAX; libtpu reads
    # its environment when JAX first starts a backend, which is after this.
    from shallow_pi_jax.perf import aot, preflight

    aot.quiet_libtpu_env()
    reports = preflight.preflight(config, args)
    return 2 if any(not r.fits for r in reports) else 0


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
