"""Training cost of distillation, fused KD step vs plain student step: `bench_train`'s work.

    bench_train(args)      # args: the command's flags (python -m shallow_pi_jax.bench_train --help)

The real-size memory part needs simulated CPU devices, configured before JAX starts (the command does).
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from shallow_pi_jax import fileio
from shallow_pi_jax.models.params import init_params
from shallow_pi_jax.perf import aot, costs
from shallow_pi_jax.training import build, recipes, sharding
from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training import step as ts
from shallow_pi_jax.training.metrics import memory_summary

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


def bench_train(args) -> dict:
    """The timing and memory parts the flags ask for, printed (and written to args.json)."""
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
    return result

