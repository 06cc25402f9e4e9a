"""Resumable training checkpoints (orbax) and the student export in openpi's layout.

    workdir/checkpoints/<step>/   full TrainState (params, optimizer state, EMA, step); async, keep-N.
                                  orbax commits a step atomically, so a run killed mid-save resumes
                                  from the previous complete step.
    workdir/student/params/       the student in openpi's params layout (export / serving / make_student)
    workdir/student/layer_map.json, workdir/student/model_config.json, workdir/student/assets/
"""
from __future__ import annotations

import json
import pathlib
import shutil

import jax
import orbax.checkpoint as ocp

from shallow_pi_jax import checkpoints


class RunCheckpoints:
    def __init__(self, workdir: pathlib.Path, keep: int, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._mngr = ocp.CheckpointManager((workdir / "checkpoints").absolute(), options=options)

    def latest_step(self):
        return self._mngr.latest_step()

    def restore(self, abstract_state):
        """Restore the latest step into arrays with the shardings of `abstract_state`'s leaves."""
        step = self._mngr.latest_step()
        return self._mngr.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def save(self, step: int, state) -> None:
        self._mngr.save(step, args=ocp.args.StandardSave(state))

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def export_student(params, out_dir: pathlib.Path, model_config: dict, layer_map: dict | None,
                   norm_stats_path: str | None, teacher_params: str | None) -> pathlib.Path:
    """Write the student as an openpi checkpoint directory (params/ + assets/ + metadata)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.save_params(jax.device_get(params), out_dir / "params", overwrite=True)
    if jax.process_index() != 0:
        return out_dir
    (out_dir / "model_config.json").write_text(json.dumps(model_config, indent=1) + "\n")
    if layer_map is not None:
        (out_dir / "layer_map.json").write_text(json.dumps({**layer_map, "teacher": teacher_params}, indent=1) + "\n")
    if norm_stats_path:
        src = pathlib.Path(norm_stats_path)
        src = src / "norm_stats.json" if src.is_dir() else src
        (out_dir / "assets").mkdir(exist_ok=True)
        shutil.copy(src, out_dir / "assets" / "norm_stats.json")
    return out_dir
