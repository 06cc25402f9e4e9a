"""The training loop: one jitted, sharded step, resumable checkpoints, metrics, the student export.

`run(config, workdir)` takes a config whose paths are real (the `demo` placeholders already
resolved by shallow_pi_jax.demo) and trains per it; rerunning resumes from the last checkpoint.
"""
from __future__ import annotations

import json
import os
import pathlib
import time

import jax
from tqdm import tqdm

from shallow_pi_jax.data.pipeline import make_dataset
from shallow_pi_jax.training import build, sharding
from shallow_pi_jax.training import step as ts
from shallow_pi_jax.training.checkpoints import RunCheckpoints, export_student
from shallow_pi_jax.training.metrics import MetricWriter, check_finite, memory_summary

_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES")


def maybe_initialize_distributed(mode: str) -> None:
    """jax.distributed on TPU pod slices / multi-GPU clusters; a no-op on a single host."""
    if mode == "off":
        return
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    multi = any(os.environ.get(k) for k in _MULTIHOST_ENV if k != "TPU_WORKER_HOSTNAMES") or "," in hosts
    multi |= int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    if mode == "on" or multi:
        jax.distributed.initialize()


def _host(tree):
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def run(config, workdir, *, max_steps: int | None = None, progress: bool = True):
    """Train per `config` in `workdir`; returns (last logged metrics, final TrainState).

    `max_steps` stops early (tests, benchmarks) without changing the schedule."""
    maybe_initialize_distributed(config.distributed)
    workdir = pathlib.Path(workdir).absolute()
    is_main = jax.process_index() == 0
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=1) + "\n")
        what = f"distilling into {config.student.depth} layers" if config.teacher.params else "training"
        print(f"{what}: {config.num_steps} steps, batch {config.batch_size}; run directory {workdir} "
              "(config.json, checkpoints/, tensorboard/, student/ at the end)")

    spec = build.run_spec(config)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    sharding.check_batch_divisible(config.batch_size, mesh)
    rng = jax.random.PRNGKey(config.seed)
    init_rng, step_rng = jax.random.split(rng)

    ckpts = RunCheckpoints(workdir, config.keep_checkpoints, config.async_checkpoint)
    start = ckpts.latest_step() or 0
    teacher_params = build.load_teacher(config, spec, mesh) if spec.teacher_cfg else None
    tx, schedule = build.optimizer(config)
    ema = config.optim.ema_decay is not None

    def fresh_state():
        return ts.init_state(build.initial_student(config, spec, teacher_params, init_rng), tx, ema)

    state_shapes = jax.eval_shape(fresh_state)
    st_sh = build.state_shardings(state_shapes, mesh)
    if start:
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shapes, st_sh)
        state = ckpts.restore(abstract)
        print(f"resumed from {workdir / 'checkpoints'} at step {start}")
    else:
        state = jax.jit(fresh_state, out_shardings=st_sh)()
    # Only now (the student is built from it) is the float32 teacher replaced by its compute-dtype copy.
    if teacher_params is not None:
        teacher_params = build.teacher_compute_params(teacher_params, spec)
    teacher_shapes = None if teacher_params is None else jax.eval_shape(lambda: teacher_params)
    step, _, _ = build.make_step(config, spec, mesh, tx, schedule, state_shapes, teacher_shapes)

    data_cfg = dict(config.data.to_dict(), batch_size=config.batch_size // jax.process_count(),
                    seed=int(config.data.seed) + start)  # a resumed run continues on fresh batches
    data = make_dataset(data_cfg, train=True)
    batch = sharding.global_batch(next(data), mesh)

    t0 = time.time()
    compiled = step.lower(state, batch, step_rng, teacher_params).compile()
    mem = memory_summary(compiled)
    writer = MetricWriter(workdir, config.wandb, config.to_dict())
    if is_main:
        print(f"compiled train step in {time.time() - t0:.1f}s on {mesh.devices.size} devices "
              f"(mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']}); per-device memory: "
              + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in mem.items()))
        writer.write_text("memory_per_device", json.dumps(mem))

    end = config.num_steps if max_steps is None else min(config.num_steps, start + max_steps)
    bar = tqdm(total=config.num_steps, initial=start, desc="train", unit="step", disable=not (is_main and progress),
               dynamic_ncols=True)
    last, window_t, window_n, done = {}, time.time(), 0, start
    try:
        for i in range(start, end):
            if i > start:
                batch = sharding.global_batch(next(data), mesh)
            state, metrics = compiled(state, batch, step_rng, teacher_params)
            window_n += 1
            done = i + 1
            save = done % config.checkpoint_every == 0 or done == end
            if done % config.log_every == 0 or save or done == start + 1:
                last = _host(metrics)
                check_finite(done, last)  # before saving: a NaN state never reaches disk
                dt = time.time() - window_t
                last.update(step_time_s=dt / window_n, samples_per_s=window_n * config.batch_size / dt)
                writer.write(done, last)
                bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in last.items()
                                 if k.startswith("loss") or k == "samples_per_s"})
                window_t, window_n = time.time(), 0
            if save:
                ckpts.save(done, state)
            bar.update(1)
    finally:
        bar.close()
        ckpts.close()
        writer.close()

    if done == config.num_steps or max_steps is not None:
        params = state.ema_params if ema else state.params
        export_student(params, workdir / "student", spec.student_cfg.to_dict(),
                       spec.layer_map.to_dict() if spec.layer_map else None,
                       config.data.norm_stats_path, config.teacher.params or None)
        if is_main:
            print(f"student written to {workdir / 'student'} (params/ in openpi layout, assets/, layer_map.json)")
    return last, state


