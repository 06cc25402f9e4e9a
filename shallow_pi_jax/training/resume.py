"""Resuming a run with another config: what may change (cadence, devices, speed knobs) and what may not
(anything that changes what is trained), and the run's config.json that records it."""
from __future__ import annotations

import json
import pathlib

from shallow_pi_jax import fileio, run_dir, trees

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
CONFIG_FILE = run_dir.CONFIG
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
    """'key: old → new; ...' of config_changes' result, each value cut to 120 characters."""
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


def write_config(workdir: pathlib.Path, new_json: str, action: str) -> None:
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
