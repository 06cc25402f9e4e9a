"""Export the student of a training run, at any saved step, as an openpi checkpoint directory.

    python -m shallow_pi_jax.export_checkpoint --workdir runs/l6 [--step 20000] [--ema] --out exports/l6_20k

Writes OUT/params (openpi layout), OUT/model_config.json, OUT/layer_map.json (when distilled) and
OUT/assets/norm_stats.json, taken from the run's config.json — the same layout the trainer writes
to WORKDIR/student at the end of a run. --workdir may also name the run's student/ (or its
params/). Nothing is written if the step or the run is not found, and nothing partial on an error.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import ml_collections
import orbax.checkpoint as ocp

from shallow_pi_jax import cli, fileio
from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training.checkpoints import export_student


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=pathlib.Path, required=True, help="the run's --workdir")
    ap.add_argument("--step", type=int, default=None, help="saved step to export (default: the latest)")
    ap.add_argument("--ema", action="store_true", help="export the EMA params instead of the raw ones")
    ap.add_argument("--out", type=pathlib.Path, required=True, help="output directory (must not exist)")
    args = cli.parse(ap, argv)

    run = find_run(args.workdir)
    if args.out.exists():
        raise ValueError(f"--out: {args.out} already exists")
    config = ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))
    with ocp.CheckpointManager(run / "checkpoints") as mngr:
        steps = mngr.all_steps()
        step = args.step if args.step is not None else mngr.latest_step()
        if step is None or step not in steps:
            raise ValueError(f"--step: {'the latest' if args.step is None else args.step} is not saved in "
                             f"{run / 'checkpoints'} (saved: {sorted(steps)})")
        state = mngr.restore(step, args=ocp.args.StandardRestore())
    params = state["ema_params"] if args.ema else state["params"]
    if params is None:
        raise ValueError(f"--ema: {run} kept no EMA params (optim.ema_decay was None)")
    plan = run_plan.derive(config)
    with fileio.atomic_dir(args.out) as tmp:
        export_student(params, tmp, plan.student, plan.layer_map, plan.data.norm_stats_path,
                       plan.teacher_params or None)
    print(f"exported step {step} of {run} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
