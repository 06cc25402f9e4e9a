"""The training loop: one jitted, sharded step, resumable checkpoints, metrics, the student export.

`run(plan, workdir)` takes a resolved plan (training.plan) whose paths are real (the `demo`
placeholders already replaced by shallow_pi_jax.demo.prepare) and trains per it; rerunning resumes
from the last checkpoint.

Nothing is written into `workdir` until the config agrees with the run's config.json (when
resuming), and the teacher, the data's first batch and the compiled step are all there: a run that
fails before its first step leaves the directory as it was. On any error the data threads, the
checkpoint saver and the metric writers are stopped before the error is raised, so the process can
exit.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

import jax
from tqdm import tqdm

from shallow_pi_jax import run_dir, verbosity
from shallow_pi_jax.data.pipeline import make_dataset
from shallow_pi_jax.training import build, resume, sharding
from shallow_pi_jax.training import step as ts
from shallow_pi_jax.training.checkpoints import RunCheckpoints, export_student
from shallow_pi_jax.training.distributed import maybe_initialize_distributed
from shallow_pi_jax.training.metrics import MetricWriter, check_finite, memory_summary
from shallow_pi_jax.training.plan import RunPlan


def _host(tree):
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def _stop(*closers) -> BaseException | None:
    """Call every closer, even after one fails; returns the first error."""
    first = None
    for close in closers:
        try:
            close()
        except Exception as e:  # noqa: BLE001
            first = first or e
    return first


def run(plan: RunPlan, workdir, *, max_steps: int | None = None, progress: bool = True, force: bool = False):
    """Train per `plan` in `workdir`; returns (last logged metrics, final TrainState).

    `max_steps` stops early (tests, benchmarks) without changing the schedule. `force` resumes even
    when the config changes what the checkpoints were trained with (see resume.RESUMABLE_CHANGES)."""
    maybe_initialize_distributed(plan.distributed)
    workdir = pathlib.Path(workdir).absolute()
    is_main = jax.process_index() == 0
    ckpts = RunCheckpoints(workdir, plan.keep_checkpoints, plan.async_checkpoint)
    data = writer = bar = None
    try:
        action = _resume_action(plan, workdir, ckpts, force, is_main)
        mesh = sharding.make_mesh(plan.mesh_data, plan.mesh_fsdp)
        sharding.check_batch_divisible(plan.batch_size, mesh)
        init_rng, step_rng = jax.random.split(jax.random.PRNGKey(plan.seed))
        teacher_params = build.load_teacher(plan, mesh) if plan.teacher else None
        tx, schedule = build.optimizer(plan)
        ema = plan.optim.ema_decay is not None

        def fresh_state():
            return ts.init_state(build.initial_student(plan, teacher_params, init_rng), tx, ema)

        state_shapes = jax.eval_shape(fresh_state)
        st_sh = build.state_shardings(state_shapes, mesh)
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shapes, st_sh)
        start, state = ckpts.restore(abstract, log=print if is_main else lambda _: None)
        if start is not None and is_main:
            print(f"resumed from {ckpts.directory} at step {start}")
        start = start or 0

        data = _data_stream(plan, mesh, start)
        batch = sharding.global_batch(next(data), mesh)  # bad data fails here, before any compile
        if state is None:
            if teacher_params is None:
                state = jax.jit(fresh_state, out_shardings=st_sh)()
            else:
                # Built outside this jit (initial_student jits with the teacher as an argument): on several
                # processes the teacher spans devices no process addresses, which jit cannot close over.
                student = build.initial_student(plan, teacher_params, init_rng)
                state = jax.jit(lambda p: ts.init_state(p, tx, ema), out_shardings=st_sh)(student)
        # Only now (the student is built from it) is the float32 teacher replaced by its compute-dtype copy.
        if teacher_params is not None:
            teacher_params = build.teacher_compute_params(teacher_params, plan)
        teacher_shapes = None if teacher_params is None else jax.eval_shape(lambda: teacher_params)
        step, _, _ = build.make_step(plan, mesh, tx, schedule, state_shapes, teacher_shapes)

        t0 = time.time()
        compiled = step.lower(state, batch, step_rng, teacher_params).compile()
        # Teacher, data and step are all there: from here on the run directory is written.
        if is_main:
            resume.write_config(workdir, plan.config_json, action)
        writer = MetricWriter(workdir, plan.wandb, json.loads(plan.config_json))
        if is_main:
            _report_compile(compiled, time.time() - t0, mesh, writer)

        end = plan.num_steps if max_steps is None else min(plan.num_steps, start + max_steps)
        bar = tqdm(total=plan.num_steps, initial=start, desc="train", unit="step",
                   disable=not (is_main and progress), dynamic_ncols=True)
        last, state, done = _train(compiled, state, batch, data, mesh, step_rng, teacher_params, plan,
                                   range(start, end), ckpts, writer, bar)
    except BaseException:
        # Stop the threads before the error leaves: the tf.data iterator in particular must not be
        # destroyed at interpreter shutdown (see DataIterator.close). A second error from stopping
        # (mostly the failed save again) is only shown with --verbose; the first one is reported.
        also = _stop(*_closers(data, bar, ckpts, writer))
        if also is not None and is_main and verbosity.requested():
            print(f"also, while stopping: {' '.join(str(also).split())}", file=sys.stderr)
        raise
    error = _stop(*_closers(data, bar, ckpts, writer))
    if error is not None:
        raise error

    if done == plan.num_steps or max_steps is not None:
        _export(state.ema_params if ema else state.params, plan, workdir, is_main)
    return last, state


def _resume_action(plan: RunPlan, workdir: pathlib.Path, ckpts: RunCheckpoints, force: bool, is_main: bool) -> str:
    """What to do with workdir/config.json (resume.check_resume_config; refuses a changed config), and
    the run's first lines."""
    action, forced = "update", {}
    if ckpts.latest_step() is not None:
        action, forced = resume.check_resume_config(workdir, plan.config_json, force)
    if is_main:
        what = f"distilling into {plan.student.depth} layers" if plan.teacher_params else "training"
        print(f"{what}: {plan.num_steps} steps, batch {plan.batch_size}; run directory {workdir} "
              "(config.json, checkpoints/, tensorboard/, student/ at the end)")
        if forced:
            print(f"--force: resuming with a changed config ({resume.describe_changes(forced)}); the old one is "
                  f"kept next to {workdir / resume.CONFIG_FILE}")
    return action


def _data_stream(plan: RunPlan, mesh, start: int):
    """This process's training batches. One data stream per device unless data.num_streams says otherwise:
    the global batch is then the same however the devices are spread over processes (1 × 8 or 2 × 4 see
    the same examples)."""
    num_streams = plan.data.num_streams or mesh.devices.size
    if plan.batch_size % num_streams:
        raise ValueError(f"batch_size ({plan.batch_size}) must be a multiple of data.num_streams "
                         f"({num_streams}{'' if plan.data.num_streams else ', one per device'})")
    streams = sharding.process_streams(mesh, num_streams)
    data = dataclasses.replace(plan.data, batch_size=plan.batch_size // num_streams * len(streams),
                               num_streams=num_streams,
                               seed=int(plan.data.seed) + start)  # a resumed run continues on fresh batches
    return make_dataset(data, train=True, streams=streams)


def _report_compile(compiled, seconds: float, mesh, writer: MetricWriter) -> None:
    mem = memory_summary(compiled)
    print(f"compiled train step in {seconds:.1f}s on {mesh.devices.size} devices "
          f"(mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']}); per-device memory: "
          + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in mem.items()))
    writer.write_text("memory_per_device", json.dumps(mem))


def _train(compiled, state, batch, data, mesh, step_rng, teacher_params, plan: RunPlan, steps: range,
           ckpts: RunCheckpoints, writer: MetricWriter, bar):
    """Run the compiled step over `steps` (the first on `batch`), logging and saving per the plan;
    returns (last logged metrics, state, steps done)."""
    start, end = steps.start, steps.stop
    last, window_t, window_n, done = {}, time.time(), 0, start
    for i in steps:
        if i > start:
            batch = sharding.global_batch(next(data), mesh)
        state, metrics = compiled(state, batch, step_rng, teacher_params)
        window_n += 1
        done = i + 1
        save = done % plan.checkpoint_every == 0 or done == end
        if done % plan.log_every == 0 or save or done == start + 1:
            last = _host(metrics)
            check_finite(done, last)  # before saving: a NaN state never reaches disk
            ckpts.check()  # a background save that failed stops the run now, not at the next save
            dt = time.time() - window_t
            last.update(step_time_s=dt / window_n, samples_per_s=window_n * plan.batch_size / dt)
            writer.write(done, last)
            bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in last.items()
                             if k.startswith("loss") or k == "samples_per_s"})
            window_t, window_n = time.time(), 0
        if save:
            ckpts.save(done, state)
        bar.update(1)
    return last, state, done


def _export(params, plan: RunPlan, workdir: pathlib.Path, is_main: bool) -> None:
    student_dir = workdir / run_dir.STUDENT  # where the commands look for a run's student
    export_student(params, student_dir, plan.student, plan.layer_map, plan.data.norm_stats_path,
                   plan.teacher_params or None, record=plan.record)
    if is_main:
        print(f"student written to {student_dir} (params/ in openpi layout, assets/, layer_map.json, "
              "policy_record.json)")


def _closers(data, bar, ckpts, writer):
    # The data first (its threads), the checkpoint last but one: it waits for the save in flight.
    return [c for c in (getattr(data, "close", None), bar and bar.close, ckpts.close, writer and writer.close) if c]
