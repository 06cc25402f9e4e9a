"""Export the student of a training run, at any saved step, as an openpi checkpoint directory.

    python -m shallow_pi_jax.export_checkpoint --workdir runs/l6 [--step 20000] [--ema] --out exports/l6_20k

Writes OUT/params (openpi layout), OUT/model_config.json, OUT/layer_map.json (when distilled) and
OUT/assets/norm_stats.json, taken from the run's config.json — the same layout the trainer writes
to WORKDIR/student at the end of a run. --workdir may also name the run's student/ (or its
params/). Nothing is written if the step or the run is not found, and nothing partial on an error.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from shallow_pi_jax import cli


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=pathlib.Path, required=True, help="the run's --workdir")
    ap.add_argument("--step", type=int, default=None, help="saved step to export (default: the latest)")
    ap.add_argument("--ema", action="store_true", help="export the EMA params instead of the raw ones")
    ap.add_argument("--out", type=pathlib.Path, required=True, help="output directory (must not exist)")
    args = cli.parse(ap, argv)
    # Imported once the flags are parsed, so that --help answers without loading JAX.
    from shallow_pi_jax.training.checkpoints import export_saved_step

    export_saved_step(args.workdir, args.out, args.step, args.ema)
    return 0


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
