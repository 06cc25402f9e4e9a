"""Pre-flight check of a TPU pod slice from any host: `aot_compile`'s work.

    reports = preflight(config, args)   # args: the command's flags (python -m shallow_pi_jax.aot_compile --help)

Compiles the trainer's steps (or teacher and student sample_actions) for a named topology with
libtpu's compiler (perf/aot.py) and prints each program's per-chip memory and cost; a program that
does not fit is reported as an `error: ` line naming what would.
"""
from __future__ import annotations

import dataclasses
import sys

from tqdm import tqdm

from shallow_pi_jax import fileio
from shallow_pi_jax.perf import aot
from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training import sharding


def preflight(config, args) -> list[aot.Report]:
    """The reports of the programs the flags ask for, on `config` (an experiment's ConfigDict)."""
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
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
    for r in reports:
        if not r.fits:
            print("error: " + aot.fit_advice(r), file=sys.stderr)
    return reports

