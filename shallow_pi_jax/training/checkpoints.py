"""Resumable training checkpoints (orbax) and the student export in openpi's layout.

    workdir/checkpoints/<step>/   full TrainState (params, optimizer state, EMA, step); async, keep-N.
                                  orbax commits a step atomically, so a run killed mid-save resumes
                                  from the previous complete step.
    workdir/checkpoints_bad/<step>/  a step that failed to restore while an older one restored:
                                  moved here (never deleted), so a resume does not retry it and
                                  keep-N cannot delete it before someone looks at it.
    workdir/student/params/       the student in openpi's params layout (export / serving / make_student)
    workdir/student/layer_map.json, workdir/student/model_config.json, workdir/student/assets/

`export_saved_step` writes the student of any saved step the same way (python -m shallow_pi_jax.export_checkpoint).
"""
from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
import orbax.checkpoint as ocp

from shallow_pi_jax import fileio, run_dir
from shallow_pi_jax.checkpoint import policy_dir, policy_record
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training.layer_map import LayerMap

BAD_DIR = run_dir.BAD_CHECKPOINTS


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}" if text else type(e).__name__


class RunCheckpoints:
    """The run's orbax CheckpointManager, opened when there is a directory to read or a first step to save:
    a run that fails before its first save leaves no checkpoints/ behind."""

    def __init__(self, workdir: pathlib.Path, keep: int, async_save: bool = True):
        self.directory = (pathlib.Path(workdir) / run_dir.CHECKPOINTS).absolute()
        self._keep, self._async = keep, async_save
        self._mngr = self._open() if self.directory.is_dir() else None
        self._in_flight = None  # the step a background save is writing: what a later error is about

    def _open(self) -> ocp.CheckpointManager:
        # Step directories are created synchronously, in save(): created in the background, a failure
        # (read-only or full disk) leaves orbax's other commit threads, which are not daemons, waiting
        # for a "directory created" signal until their timeout (20 min), and the process cannot exit.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self._keep, create=True, enable_async_checkpointing=self._async,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        return ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return None if self._mngr is None else self._mngr.latest_step()

    def restore(self, abstract_state, log=print):
        """(step, state): the newest step that restores, into arrays with the shardings of
        `abstract_state`'s leaves; (None, None) without checkpoints.

        A step that fails while an older one restores is corrupt (a truncated file, a bad disk): it is
        moved to workdir/checkpoints_bad/ and named by `log`. When no step restores, nothing is moved
        (the config, not the files, is then the likely cause) and a ValueError names the directory."""
        steps = [] if self._mngr is None else sorted(self._mngr.all_steps(), reverse=True)
        failed = []
        for step in steps:
            try:
                state = self._mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many types for a bad step
                failed.append((step, e))
                continue
            for bad, e in failed:
                moved = self._move_aside(bad)
                log(f"checkpoint step {bad} in {self.directory} does not restore ({_reason(e)}); moved it to "
                    f"{moved}; resuming from step {step}")
            if failed:
                self._mngr.reload()
            return step, state
        if failed:
            step, e = failed[0]
            tried = ", ".join(str(s) for s, _ in failed)
            raise ValueError(f"{self.directory}: no checkpoint restores (tried steps {tried}; step {step}: "
                             f"{_reason(e)}). If the config changed since these were saved, resume with the old "
                             "one; otherwise start a new run with another --workdir")
        return None, None

    def _move_aside(self, step: int) -> pathlib.Path:
        bad_root = self.directory.parent / BAD_DIR
        dst, n = bad_root / str(step), 1
        while dst.exists():
            dst, n = bad_root / f"{step}.{n}", n + 1
        if jax.process_index() == 0:  # one process moves it (a shared filesystem on multi-host runs)
            bad_root.mkdir(exist_ok=True)
            (self.directory / str(step)).rename(dst)
        return dst

    def save(self, step: int, state) -> None:
        """Start saving `step` (in the background when async); an error of an earlier background save,
        or of this one's directory, is raised here as an OSError naming the directory."""
        if self._mngr is None:
            self._mngr = self._open()
        self.wait()  # orbax waits for the previous save anyway; here its error is named as that step's
        try:
            self._mngr.save(step, args=ocp.args.StandardSave(state))
        except Exception as e:  # noqa: BLE001
            raise self._save_error(step, e) from e
        self._in_flight = step if self._async else None

    def check(self) -> None:
        """Raise the error of a background save that has already failed (cheap: no waiting for a save)."""
        if self._mngr is None:
            return
        try:
            self._mngr.check_for_errors()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(self._in_flight, e) from e

    def wait(self) -> None:
        if self._mngr is not None:
            try:
                self._mngr.wait_until_finished()
            except Exception as e:  # noqa: BLE001
                raise self._save_error(self._in_flight, e) from e
            self._in_flight = None

    def close(self) -> None:
        """Wait for the save in flight, then release orbax's threads, also when that save failed
        (the error is raised after the release)."""
        if self._mngr is None:
            return
        mngr, self._mngr = self._mngr, None
        try:
            mngr.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            error = self._save_error(self._in_flight, e)
        else:
            error = None
        try:
            mngr.close()
        except Exception:  # noqa: BLE001 - the failed save again; already in `error`
            if error is None:
                raise
        if error is not None:
            raise error

    def _save_error(self, step: int | None, e: BaseException) -> OSError:
        cause = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        what = f"checkpoint step {step}" if step is not None else "a checkpoint"
        where = f"could not be written to {self.directory}"
        if isinstance(cause, OSError):
            detail = cause.strerror or str(cause)
            if cause.filename:
                detail += f": {cause.filename}"
        else:
            detail = _reason(e)
        err = OSError(f"{what} {where} ({detail}); the last complete step is {self._last_complete()}")
        err.errno = getattr(cause, "errno", None)
        return err

    def _last_complete(self) -> str:
        steps = [int(p.name) for p in self.directory.glob("*") if p.name.isdigit() and p.is_dir()]
        return str(max(steps)) if steps else "none"


def export_student(params, out_dir: pathlib.Path, model_config: ModelConfig, layer_map: LayerMap | None,
                   norm_stats_path: str | None, teacher_params: str | None,
                   record: policy_record.PolicyRecord | None = None) -> pathlib.Path:
    """Write the student as a policy directory (params/ in openpi's layout + assets/ + metadata), with
    `record` (the plan's) as its policy_record.json: what serving must feed it."""
    lm = None if layer_map is None else layer_map.to_dict()
    return policy_dir.write(out_dir, params, model_config, layer_map=lm,
                            lineage=policy_dir.Lineage(teacher=teacher_params), norm_stats=norm_stats_path or None,
                            record=record)


def find_run(path: pathlib.Path) -> pathlib.Path:
    """The run directory: `path` itself, or the run whose student/ (or student/params) it names."""
    path = path.expanduser().absolute()
    for run in (path, path.parent, path.parent.parent):
        if (run / "config.json").is_file() and (run / "checkpoints").is_dir():
            return run
    if not path.exists():
        raise FileNotFoundError(f"--workdir: {path} does not exist")
    raise ValueError(f"--workdir: {path} is not a training run (expected config.json and checkpoints/ "
                     "written by python -m shallow_pi_jax.train)")


def export_saved_step(workdir: pathlib.Path, out: pathlib.Path, step: int | None = None,
                      ema: bool = False) -> pathlib.Path:
    """The student of the run at (or above) `workdir` at a saved `step` (default: the latest), its
    EMA params with `ema`, written to `out` as export_student does; nothing partial on an error."""
    run = find_run(workdir)
    if out.exists():
        raise ValueError(f"--out: {out} already exists")
    config = ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))
    with ocp.CheckpointManager(run / "checkpoints") as mngr:
        steps = mngr.all_steps()
        chosen = step if step is not None else mngr.latest_step()
        if chosen is None or chosen not in steps:
            raise ValueError(f"--step: {'the latest' if step is None else step} is not saved in "
                             f"{run / 'checkpoints'} (saved: {sorted(steps)})")
        state = mngr.restore(chosen, args=ocp.args.StandardRestore())
    params = state["ema_params"] if ema else state["params"]
    if params is None:
        raise ValueError(f"--ema: {run} kept no EMA params (optim.ema_decay was None)")
    plan = run_plan.derive(config)
    with fileio.atomic_dir(out) as tmp:
        export_student(params, tmp, plan.student, plan.layer_map, plan.data.norm_stats_path,
                       plan.teacher_params or None)
    print(f"exported step {chosen} of {run} to {out}")
    return out
