"""The training loop: one jitted, sharded step, resumable checkpoints, metrics, the student export.

`run(config, workdir)` takes a config whose paths are real (the `demo` placeholders already
resolved by shallow_pi_jax.demo) and trains per it; rerunning resumes from the last checkpoint.

Nothing is written into `workdir` until the config is valid, agrees with the run's config.json
(when resuming), and the teacher, the data's first batch and the compiled step are all there: a
run that fails before its first step leaves the directory as it was. On any error the data
threads, the checkpoint saver and the metric writers are stopped before the error is raised, so
the process can exit.
"""
from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import jax
from tqdm import tqdm

from shallow_pi_jax import cli, fileio, trees, verbosity
from shallow_pi_jax.data.pipeline import make_dataset
from shallow_pi_jax.training import build, sharding
from shallow_pi_jax.training import config as train_config
from shallow_pi_jax.training import step as ts
from shallow_pi_jax.training.checkpoints import RunCheckpoints, export_student
from shallow_pi_jax.training.metrics import MetricWriter, check_finite, memory_summary

_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES")
# Set by shallow_pi_jax.launch (or by hand on any cluster jax cannot detect): process 0's coordinator
# address, the number of processes and this process's id. jax reads only the address itself.
COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
# Bounds, so that no process waits long on one that is gone: for all processes to connect, for a silent
# process to be declared dead (jax then ends the others), for the others at exit. The connect bound can be
# lowered with SHALLOW_PI_INIT_TIMEOUT_S (tests).
INIT_TIMEOUT_S, HEARTBEAT_TIMEOUT_S, SHUTDOWN_TIMEOUT_S = 120, 60, 30
INIT_TIMEOUT_ENV = "SHALLOW_PI_INIT_TIMEOUT_S"


def _env_int(name: str) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: expected an int, got {text!r}") from None


def launcher_env() -> tuple[str, int, int] | None:
    """(coordinator address, process count, process id) from the environment; None when not set."""
    if os.environ.get(NUM_PROCESSES_ENV) is None and os.environ.get(PROCESS_ID_ENV) is None:
        return None
    count, index = _env_int(NUM_PROCESSES_ENV), _env_int(PROCESS_ID_ENV)
    if count < 1:
        raise ValueError(f"{NUM_PROCESSES_ENV}: expected a process count >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"{PROCESS_ID_ENV}: expected a process id in 0..{count - 1} ({NUM_PROCESSES_ENV}={count}), "
                         f"got {index}")
    address = os.environ.get(COORDINATOR_ENV, "")
    if count > 1 and ":" not in address:
        raise ValueError(f"{COORDINATOR_ENV}: expected process 0's host:port, got {address!r}")
    return address, count, index


def maybe_initialize_distributed(mode: str) -> None:
    """jax.distributed on TPU pod slices / multi-GPU clusters / shallow_pi_jax.launch; a no-op on one host.

    Malformed JAX_NUM_PROCESSES / JAX_PROCESS_ID / JAX_COORDINATOR_ADDRESS raise a ValueError naming the
    variable. A process whose peers do not all connect within INIT_TIMEOUT_S is ended by jax itself
    (DEADLINE_EXCEEDED, exit status 134) after the line printed here; one whose job turns out to have
    another number of processes raises a ValueError."""
    if mode == "off":
        return
    given = launcher_env()
    if given is not None:
        address, count, index = given
        if count == 1 and mode != "on":
            return
        kwargs = dict(coordinator_address=address, num_processes=count, process_id=index)
    else:
        hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
        multi = any(os.environ.get(k) for k in _MULTIHOST_ENV if k != "TPU_WORKER_HOSTNAMES") or "," in hosts
        multi |= int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
        if not (mode == "on" or multi):
            return
        kwargs = {}
    timeout = _env_int(INIT_TIMEOUT_ENV) if os.environ.get(INIT_TIMEOUT_ENV) else INIT_TIMEOUT_S
    # Said first: when a peer never connects, jax ends this process itself (its own DEADLINE_EXCEEDED
    # message, exit status 134) without raising, and this line tells which process waited for what.
    where = (f"process {kwargs['process_id']} of {kwargs['num_processes']}, coordinator "
             f"{kwargs['coordinator_address']}" if kwargs else "process ids from the cluster's environment")
    print(f"jax.distributed: {where}; waiting up to {timeout} s for every process to connect",
          file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout,
                                   heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                                   shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - jax raises XlaRuntimeError / RuntimeError with a long status text
        raise ValueError(f"jax.distributed.initialize failed ({where}; are all processes started, with one "
                         f"{NUM_PROCESSES_ENV} and distinct {PROCESS_ID_ENV}?): {' '.join(str(e).split())[:400]}"
                         ) from None
    if given is not None and jax.process_count() != given[1]:
        raise ValueError(f"{NUM_PROCESSES_ENV}={given[1]}, but the job has {jax.process_count()} processes")


def _host(tree):
    return {k: float(v) for k, v in jax.device_get(tree).items()}


# What may differ from the run's config.json on resume: how long it runs, how often it logs and
# saves, where it logs, the device layout, and memory/speed knobs. Any other key (model, student
# depth and layer map, teacher, data, loss, optimizer and schedule, batch size, seeds) changes what
# is trained, and a resume with it is refused unless forced.
RESUMABLE_CHANGES = ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "async_checkpoint",
                     "wandb", "distributed", "workdir", "mesh", "remat", "data.num_parallel_calls",
                     "data.prefetch")
# Keys added to the config after runs were saved with the older code: absent from such a run's
# config.json, they may appear on resume with the value that does what the older code did.
ADDED_KEYS = {"student.expert_map": ("same",), "teacher.preset": ("", "data"), "data.num_streams": (None, 0)}
CONFIG_FILE = "config.json"
_ABSENT = "<absent>"


def config_changes(old: dict, new: dict) -> tuple[dict, dict]:
    """(refused, allowed): {dotted key: (old value, new value)} of the keys that differ."""
    a, b = trees.flatten(old, ".", keep_empty=True), trees.flatten(new, ".", keep_empty=True)
    refused, allowed = {}, {}
    for key in sorted(a.keys() | b.keys()):
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va != vb:
            free = any(key == k or key.startswith(k + ".") for k in RESUMABLE_CHANGES)
            free |= va == _ABSENT and vb in ADDED_KEYS.get(key, ())
            (allowed if free else refused)[key] = (va, vb)
    return refused, allowed


def _short(v) -> str:
    text = v if v == _ABSENT else json.dumps(v)
    return text if len(text) <= 120 else text[:117] + "..."


def describe_changes(changes: dict) -> str:
    return "; ".join(f"{k}: {_short(a)} → {_short(b)}" for k, (a, b) in changes.items())


def check_resume_config(workdir: pathlib.Path, new_json: str, force: bool) -> tuple[str, dict]:
    """What to do with workdir/config.json on a resume: ("keep" | "update" | "replace", refused changes).

    Raises (writing nothing) when the new config changes what the saved checkpoints were trained with
    and `force` is not set; "replace" keeps the old file as config.json.<n>."""
    path = workdir / CONFIG_FILE
    try:
        old_text = path.read_text()
        old = json.loads(old_text)
    except FileNotFoundError:
        return "update", {}
    except (OSError, ValueError) as e:
        if force:
            return "replace", {}
        raise ValueError(f"{path}: cannot read the config the checkpoints in {workdir / 'checkpoints'} were "
                         f"trained with ({e}); fix the file, use another --workdir, or pass --force") from None
    if old_text == new_json:
        return "keep", {}
    refused, _ = config_changes(old, json.loads(new_json))
    if refused and not force:
        raise ValueError(f"{workdir} was trained with another config; these keys differ from its {CONFIG_FILE} "
                         f"(old → new): {describe_changes(refused)}. Resume with the old values, use another "
                         "--workdir, or pass --force to resume anyway (the old config.json is kept)")
    return ("replace" if refused else "update"), refused


def _write_config(workdir: pathlib.Path, new_json: str, action: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / CONFIG_FILE
    if action == "keep":
        return
    if action == "replace" and path.exists():
        n = 1
        while (workdir / f"{CONFIG_FILE}.{n}").exists():
            n += 1
        path.rename(workdir / f"{CONFIG_FILE}.{n}")
    fileio.write_text(path, new_json)


def _stop(*closers) -> BaseException | None:
    """Call every closer, even after one fails; returns the first error."""
    first = None
    for close in closers:
        try:
            close()
        except Exception as e:  # noqa: BLE001
            first = first or e
    return first


def run(config, workdir, *, max_steps: int | None = None, progress: bool = True, force: bool = False):
    """Train per `config` in `workdir`; returns (last logged metrics, final TrainState).

    `max_steps` stops early (tests, benchmarks) without changing the schedule. `force` resumes even
    when the config changes what the checkpoints were trained with (see RESUMABLE_CHANGES)."""
    train_config.validate(config)
    maybe_initialize_distributed(config.distributed)
    workdir = pathlib.Path(workdir).absolute()
    is_main = jax.process_index() == 0
    ckpts = RunCheckpoints(workdir, config.keep_checkpoints, config.async_checkpoint)
    data = writer = bar = None
    try:
        new_json = config.to_json_best_effort(indent=1) + "\n"
        action, forced = "update", {}
        if ckpts.latest_step() is not None:
            action, forced = check_resume_config(workdir, new_json, force)
        if is_main:
            what = f"distilling into {config.student.depth} layers" if config.teacher.params else "training"
            print(f"{what}: {config.num_steps} steps, batch {config.batch_size}; run directory {workdir} "
                  "(config.json, checkpoints/, tensorboard/, student/ at the end)")
            if forced:
                print(f"--force: resuming with a changed config ({describe_changes(forced)}); the old one is kept "
                      f"next to {workdir / CONFIG_FILE}")

        spec = build.run_spec(config)
        record = build.student_record(config)  # what the student is served with
        mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
        sharding.check_batch_divisible(config.batch_size, mesh)
        rng = jax.random.PRNGKey(config.seed)
        init_rng, step_rng = jax.random.split(rng)

        teacher_params = build.load_teacher(config, spec, mesh) if spec.teacher_cfg else None
        tx, schedule = build.optimizer(config)
        ema = config.optim.ema_decay is not None

        def fresh_state():
            return ts.init_state(build.initial_student(config, spec, teacher_params, init_rng), tx, ema)

        state_shapes = jax.eval_shape(fresh_state)
        st_sh = build.state_shardings(state_shapes, mesh)
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shapes, st_sh)
        start, state = ckpts.restore(abstract, log=print if is_main else lambda _: None)
        if start is not None and is_main:
            print(f"resumed from {ckpts.directory} at step {start}")
        start = start or 0

        # One data stream per device unless data.num_streams says otherwise: the global batch is then the
        # same however the devices are spread over processes (1 × 8 or 2 × 4 see the same examples).
        num_streams = config.data.num_streams or mesh.devices.size
        if config.batch_size % num_streams:
            raise ValueError(f"batch_size ({config.batch_size}) must be a multiple of data.num_streams "
                             f"({num_streams}{'' if config.data.num_streams else ', one per device'})")
        streams = sharding.process_streams(mesh, num_streams)
        data_cfg = dict(config.data.to_dict(), batch_size=config.batch_size // num_streams * len(streams),
                        num_streams=num_streams,
                        seed=int(config.data.seed) + start)  # a resumed run continues on fresh batches
        data = make_dataset(data_cfg, train=True, streams=streams)
        batch = sharding.global_batch(next(data), mesh)  # bad data fails here, before any compile
        if state is None:
            if teacher_params is None:
                state = jax.jit(fresh_state, out_shardings=st_sh)()
            else:
                # Built outside this jit (initial_student jits with the teacher as an argument): on several
                # processes the teacher spans devices no process addresses, which jit cannot close over.
                student = build.initial_student(config, spec, teacher_params, init_rng)
                state = jax.jit(lambda p: ts.init_state(p, tx, ema), out_shardings=st_sh)(student)
        # Only now (the student is built from it) is the float32 teacher replaced by its compute-dtype copy.
        if teacher_params is not None:
            teacher_params = build.teacher_compute_params(teacher_params, spec)
        teacher_shapes = None if teacher_params is None else jax.eval_shape(lambda: teacher_params)
        step, _, _ = build.make_step(config, spec, mesh, tx, schedule, state_shapes, teacher_shapes)

        t0 = time.time()
        compiled = step.lower(state, batch, step_rng, teacher_params).compile()
        mem = memory_summary(compiled)
        # Teacher, data and step are all there: from here on the run directory is written.
        if is_main:
            _write_config(workdir, new_json, action)
        writer = MetricWriter(workdir, config.wandb, config.to_dict())
        if is_main:
            print(f"compiled train step in {time.time() - t0:.1f}s on {mesh.devices.size} devices "
                  f"(mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']}); per-device memory: "
                  + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in mem.items()))
            writer.write_text("memory_per_device", json.dumps(mem))

        end = config.num_steps if max_steps is None else min(config.num_steps, start + max_steps)
        bar = tqdm(total=config.num_steps, initial=start, desc="train", unit="step",
                   disable=not (is_main and progress), dynamic_ncols=True)
        last, window_t, window_n, done = {}, time.time(), 0, start
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
                ckpts.check()  # a background save that failed stops the run now, not at the next save
                dt = time.time() - window_t
                last.update(step_time_s=dt / window_n, samples_per_s=window_n * config.batch_size / dt)
                writer.write(done, last)
                bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in last.items()
                                 if k.startswith("loss") or k == "samples_per_s"})
                window_t, window_n = time.time(), 0
            if save:
                ckpts.save(done, state)
            bar.update(1)
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

    if done == config.num_steps or max_steps is not None:
        params = state.ema_params if ema else state.params
        student_dir = workdir / cli.RUN_STUDENT  # where the commands look for a run's student
        export_student(params, student_dir, spec.student_cfg.to_dict(),
                       spec.layer_map.to_dict() if spec.layer_map else None,
                       config.data.norm_stats_path, config.teacher.params or None, record=record)
        if is_main:
            print(f"student written to {student_dir} (params/ in openpi layout, assets/, layer_map.json, "
                  "policy_record.json)")
    return last, state


def _closers(data, bar, ckpts, writer):
    # The data first (its threads), the checkpoint last but one: it waits for the save in flight.
    return [c for c in (getattr(data, "close", None), bar and bar.close, ckpts.close, writer and writer.close) if c]
