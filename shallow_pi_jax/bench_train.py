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
import statistics
import sys
import time

MAX_DEVICES = 32
# Simulated devices must be configured before jax starts.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={MAX_DEVICES}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from shallow_pi_jax import cli, fileio  # noqa: E402
from shallow_pi_jax.models.params import init_params  # noqa: E402
from shallow_pi_jax.perf import aot, costs  # noqa: E402
from shallow_pi_jax.training import build, recipes, sharding  # noqa: E402
from shallow_pi_jax.training import plan as run_plan  # noqa: E402
from shallow_pi_jax.training import step as ts  # noqa: E402
from shallow_pi_jax.training.metrics import memory_summary  # noqa: E402

GiB = 2 ** 30


def concrete_inputs(config, kind: str, mesh, batch_size: int, seed: int = 0):
    """Real (random-weight) arguments for the `kind` step: the same student state and batch for both kinds."""
    c = aot.step_config(config, kind)
    step, abstract = aot.train_step_and_args(c, mesh, batch_size)
    plan = run_plan.derive(c)
    tx, _ = build.optimizer(plan)
    key = jax.random.PRNGKey(seed)
    state_sh, batch_sh, rng_sh = (jax.tree.map(lambda x: x.sharding, a) for a in abstract[:3])
    params = jax.jit(lambda k: init_params(plan.student, k))(key)
    state = jax.jit(lambda p: ts.init_state(p, tx, plan.optim.ema_decay is not None), out_shardings=state_sh)(params)
    rs = np.random.default_rng(seed)
    batch = jax.tree.map(lambda x, s: jax.device_put(
        (rs.uniform(-1, 1, x.shape) if jnp.issubdtype(x.dtype, jnp.floating) else np.ones(x.shape)).astype(x.dtype), s),
        build.abstract_batch(plan.student, batch_size), batch_sh)
    teacher = None
    if plan.teacher is not None:
        t_sh = jax.tree.map(lambda x: x.sharding, abstract[3])
        dt = jnp.dtype(plan.teacher.dtype)
        teacher = jax.jit(lambda k: jax.tree.map(lambda x: x.astype(dt), init_params(plan.teacher, k)),
                          out_shardings=t_sh)(jax.random.fold_in(key, 1))
    return step, abstract, [state, batch, jax.device_put(key, rng_sh), teacher]


def time_steps(config, batch_size: int, repeats: int, devices) -> dict:
    """Median wall time of the fused KD step and the plain student step, run alternately."""
    mesh = sharding.make_mesh(1, -1, devices=devices)
    runs, out = {}, {}
    for kind in tqdm(("kd", "plain"), desc="compile", unit="step"):
        step, abstract, args = concrete_inputs(config, kind, mesh, batch_size)
        compiled = step.lower(*abstract).compile()
        unrolled = costs.unroll_scans(step, *abstract)
        xla = costs.xla_cost(costs.compile_timed(unrolled, abstract)[0])
        out[kind] = {"xla_flops": xla["flops"], "matmul_flops": costs.matmul_flops(step, *abstract), "times_s": []}
        runs[kind] = (compiled, args)
    for kind, (compiled, args) in runs.items():  # warm-up (first run allocates)
        args[0], metrics = compiled(*args)
        jax.block_until_ready(metrics)
    for _ in tqdm(range(repeats), desc="timing", unit="pair"):
        for kind, (compiled, args) in runs.items():
            t0 = time.perf_counter()
            args[0], metrics = compiled(*args)  # the state is donated: carry it forward
            jax.block_until_ready(metrics)
            out[kind]["times_s"].append(time.perf_counter() - t0)
    for kind in out:
        out[kind]["median_s"] = statistics.median(out[kind]["times_s"])
    return out


def real_size_memory(config, device_counts, global_batch: int) -> dict:
    out = {}
    c = aot.step_config(config, "kd")
    for n in tqdm(device_counts, desc="compile real size", unit="mesh"):
        mesh = sharding.make_mesh(int(c.mesh.data), int(c.mesh.fsdp), devices=jax.devices()[:n])
        step, args = aot.train_step_and_args(c, mesh, global_batch)
        compiled, seconds = costs.compile_timed(step, args)
        out[n] = dict(memory_summary(compiled), compile_s=seconds, mesh=dict(mesh.shape))
        tqdm.write(f"{n} devices: total {out[n]['total'] / GiB:.2f} GiB per device (compiled in {seconds:.0f}s)")
    return out


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
    available = len(jax.devices())
    try:
        counts = [int(x) for x in args.devices.split(",") if x.strip()]
    except ValueError:
        counts = [0]
    if not counts or any(n < 1 or n > available for n in counts):
        raise ValueError(f"--devices: expected sizes in [1, {available}] (simulated CPU devices), got {args.devices!r}")
    if args.repeats < 1:
        raise ValueError(f"--repeats: expected >= 1, got {args.repeats}")
    result = {}
    if not args.skip_timing:
        small = recipes.load(args.small)
        batch = args.batch or int(small.batch_size)
        t = time_steps(small, batch, args.repeats, jax.devices()[:1])
        result["timing"] = dict(t, config=args.small, batch=batch, device=str(jax.devices()[0].device_kind))
        kd, plain = t["kd"], t["plain"]
        print(f"\nside by side ({args.small}, batch {batch}, 1 {jax.devices()[0].platform} device, "
              f"median of {args.repeats}):")
        print(f"  fused KD step     {kd['median_s'] * 1e3:9.1f} ms   XLA {kd['xla_flops'] / 1e9:9.2f} GFLOP")
        print(f"  plain student step{plain['median_s'] * 1e3:9.1f} ms   XLA {plain['xla_flops'] / 1e9:9.2f} GFLOP")
        print(f"  ratio KD / plain: time {kd['median_s'] / plain['median_s']:.2f}x, XLA FLOPs "
              f"{kd['xla_flops'] / plain['xla_flops']:.2f}x "
              f"(matmuls alone {kd['matmul_flops'] / plain['matmul_flops']:.2f}x)")
    if not args.skip_memory:
        config = recipes.load(args.config)
        mem = real_size_memory(config, counts, args.global_batch)
        result["memory"] = {"config": args.config, "global_batch": args.global_batch, "remat": bool(config.remat),
                            "per_device": {str(k): v for k, v in mem.items()}}
        print(f"\nreal-size fused KD step ({args.config}, global batch {args.global_batch}, "
              f"remat {bool(config.remat)}), compiled per-device memory (GiB):")
        print(f"  {'devices':>7} {'argument':>9} {'output':>7} {'temp':>7} {'code':>6} {'alias':>7} {'total':>7}")
        for n, m in mem.items():
            print(f"  {n:>7} {m['argument'] / GiB:9.2f} {m['output'] / GiB:7.2f} {m['temp'] / GiB:7.2f} "
                  f"{m['generated_code'] / GiB:6.3f} {m['alias'] / GiB:7.2f} {m['total'] / GiB:7.2f}")
    if args.json:
        fileio.write_json(args.json, result, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
