r"""Offline evaluation: action error of a student (and optionally its teacher) on held-out episodes,
per step of the action chunk, against the ground truth and against the teacher.

    # the demo: held-out ReachEnv episodes (reset seeds disjoint from the training set), built offline
    python -m shallow_pi_jax.evaluate --checkpoint /tmp/l6_demo/student --teacher shallow_pi_jax/assets/demo_teacher \
        --env demo --out /tmp/l6_demo/eval
    # a real dataset: hold out the last 10 % of episodes (any tfds split expression)
    python -m shallow_pi_jax.evaluate --checkpoint runs/l6/student --teacher /ckpt/pi05_libero --env libero \
        --data-dir /data/rlds --dataset libero_10_no_noops --split "train[-10%:]" \
        --tokenizer /ckpt/paligemma_tokenizer.model --out runs/l6/eval

--checkpoint and --teacher take any policy directory: a training run's --workdir (its student/), a
student directory, an openpi checkpoint or its params/. Writes OUT/summary.json and
OUT/action_error.png (all or nothing). Errors are in robot units
(actions unnormalised with the checkpoint's norm stats, sliced to the robot's dims): mean absolute
error and RMSE per horizon step, averaged over frames and action dims, plus per-dim MAE. Student
and teacher see the same batches and the same noise (--noise-seed), so their difference is the
distillation's, not the sampler's.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from shallow_pi_jax import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", "--params", dest="checkpoint", required=True,
                   help="student policy directory (a training run, a student directory, a checkpoint or its params/)")
    p.add_argument("--teacher", default=None, help="teacher policy directory (optional)")
    cli.add_data_flags(p)
    p.add_argument("--max-frames", type=int, default=512, help="frames evaluated (default 512; 0 = all)")
    p.add_argument("--num-steps", type=int, default=10, help="flow integration steps (default: 10)")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, required=True, help="output directory (summary.json, action_error.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    return p


def main(argv=None) -> int:
    args = cli.parse(build_parser(), argv)
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"--out: {args.out} exists (pass --overwrite)")
    # Imported once the flags are parsed, so that --help answers without loading JAX or TensorFlow.
    from shallow_pi_jax.eval.open_loop import evaluate_checkpoints

    evaluate_checkpoints(args.checkpoint, args.teacher, args, args.out, max_frames=args.max_frames or None,
                         num_steps=args.num_steps, noise_seed=args.noise_seed)
    return 0


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
