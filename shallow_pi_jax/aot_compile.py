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
import dataclasses
import sys

from tqdm import tqdm

from shallow_pi_jax import cli, fileio
from shallow_pi_jax.perf import aot  # noqa: E402  (imports jax lazily enough for the env below)
from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training import recipes, sharding

aot.quiet_libtpu_env()


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
    reason = aot.libtpu_missing()
    if reason:
        raise OSError(reason)  # the TPU compiler is a package this machine lacks
    topo = aot.tpu_topology(args.topology)
    reports = []
    if args.inference:
        plan = run_plan.derive(aot.step_config(config, "kd"))
        teacher, student = plan.teacher, plan.student
        if str(teacher.dtype) != str(student.dtype):  # serve both in the teacher's (accelerator) dtype
            student = dataclasses.replace(student, dtype=teacher.dtype)
        jobs = [(f"teacher sample_actions (L{teacher.depth}, {args.num_steps} steps)", teacher),
                (f"student sample_actions (L{student.depth}, {args.num_steps} steps)", student)]
        cache = {}  # teacher and student differ only in depth: their small cost models are the same programs
        for name, cfg in tqdm(jobs, desc="compile", unit="model"):
            reports.append(aot.inference_report(cfg, topo.devices[0], topo.chip, args.num_steps, name=name,
                                                topology=f"{args.topology.split(':')[0]} (1 chip)",
                                                estimate=not args.no_estimate, cost_cache=cache))
    else:
        data, fsdp = aot.parse_mesh(args.mesh, config)
        mesh = sharding.make_mesh(data, fsdp, devices=topo.devices)
        batch = args.global_batch or int(config.batch_size)
        for kind in tqdm(steps, desc="compile", unit="step"):
            reports.append(aot.train_step_report(config, mesh, topo.chip, batch, kind, topology=args.topology,
                                                 estimate=not args.no_estimate))
    print(f"remat: {bool(config.remat)}")
    for r in reports:
        print("\n".join(aot.format_report(r)))
    if args.inference and len(reports) == 2 and not args.no_estimate:
        t, s = reports
        print(f"teacher / student: FLOPs {t.flops / s.flops:.2f}x, XLA estimated latency "
              f"{t.seconds * 1e3:.2f} ms / {s.seconds * 1e3:.2f} ms = {t.seconds / s.seconds:.2f}x")
    if args.json:
        fileio.write_json(args.json, {"config": args.config, "topology": args.topology, "remat": bool(config.remat),
                                      "reports": [r.to_dict() for r in reports]}, default=str)
    unfit = [r for r in reports if not r.fits]
    for r in unfit:
        print("error: " + aot.fit_advice(r), file=sys.stderr)
    return 2 if unfit else 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
