"""Resumable training checkpoints (orbax) and the student export in openpi's layout.

    workdir/checkpoints/<step>/   full TrainState (params, optimizer state, EMA, step); async, keep-N.
                                  orbax commits a step atomically, so a run killed mid-save resumes
                                  from the previous complete step.
    workdir/student/params/       the student in openpi's params layout (export / serving / make_student)
    workdir/student/layer_map.json, workdir/student/model_config.json, workdir/student/assets/
"""
from __future__ import annotations

import pathlib

import orbax.checkpoint as ocp

from shallow_pi_jax.checkpoint import policy_dir
from shallow_pi_jax.models.config import ModelConfig


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
    """Write the student as a policy directory (params/ in openpi's layout + assets/ + metadata)."""
    lm = None if layer_map is None else {**layer_map, "teacher": teacher_params}
    return policy_dir.write(out_dir, params, ModelConfig.from_dict(model_config), layer_map=lm,
                            norm_stats=norm_stats_path or None)
