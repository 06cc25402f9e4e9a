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
import time

import numpy as np

from shallow_pi_jax import cli, fileio
from shallow_pi_jax.checkpoint import policy_dir, policy_record
from shallow_pi_jax.data import norm_stats as ns
from shallow_pi_jax.data import transforms as data_transforms
from shallow_pi_jax.data.pipeline import make_dataset
from shallow_pi_jax.eval.open_loop import (
    add_data_flags,
    eval_data_config,
    evaluate,
    plot,
)
from shallow_pi_jax.serve.policy import Policy, load_checkpoint
from shallow_pi_jax.serve.presets import get_preset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", "--params", dest="checkpoint", required=True,
                   help="student policy directory (a training run, a student directory, a checkpoint or its params/)")
    p.add_argument("--teacher", default=None, help="teacher policy directory (optional)")
    add_data_flags(p)
    p.add_argument("--max-frames", type=int, default=512, help="frames evaluated (default 512; 0 = all)")
    p.add_argument("--num-steps", type=int, default=10, help="flow integration steps (default: 10)")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, required=True, help="output directory (summary.json, action_error.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    return p


def load_teacher(path, student, preset):
    """The teacher; an openpi checkpoint records no horizon or prompt length: it reads the student's."""
    path = cli.policy_path(path)
    recorded = policy_dir.read(path).config is not None
    s = student.config
    return load_checkpoint(path, preset=preset, action_horizon=None if recorded else s.action_horizon,
                           max_token_len=None if recorded else s.max_token_len)


def main(argv=None) -> int:
    args = cli.parse(build_parser(), argv)
    preset = get_preset(args.env)
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"--out: {args.out} exists (pass --overwrite)")
    student = load_checkpoint(cli.policy_path(args.checkpoint), preset=preset)
    teacher = load_teacher(args.teacher, student, preset) if args.teacher else None
    s_cfg = student.config
    if teacher is not None:
        for field in ("pi05", "action_horizon", "action_dim", "max_token_len", "image_keys", "image_size"):
            if getattr(teacher.config, field) != getattr(s_cfg, field):
                raise ValueError(f"teacher.{field}: {getattr(teacher.config, field)} differs from the student's "
                                 f"{getattr(s_cfg, field)}; they must read the same inputs")
        # Both are fed the student's batches: the teacher must see the world as the student's record says.
        policy_record.check_same(student.record, f"the student's record ({student.root})", teacher.record,
                                 f"the teacher's ({teacher.record.source or teacher.root})")
    data_cfg, stats_path, dataset, data_dir = eval_data_config(args, student, preset)

    out_tf = data_transforms.make_output_transform(data_cfg)
    stats = ns.load(stats_path)["actions"]
    robot_dim = out_tf.action_dim

    def unnormalize(actions):
        # Delta actions need no state here: the same state is added to prediction and truth.
        return ns.unnormalize(np.asarray(actions), stats, data_cfg.quantile_norm)[..., :robot_dim]

    student_policy = Policy(s_cfg, student.params, num_steps=args.num_steps)
    teacher_policy = Policy(teacher.config, teacher.params, num_steps=args.num_steps) if teacher else None
    start = time.monotonic()
    errors = evaluate(student_policy, teacher_policy, make_dataset(data_cfg, train=False),
                      unnormalize, args.max_frames or None, args.noise_seed)
    summary = {
        "student": str(student.root), "teacher": str(teacher.root) if teacher else None,
        "student_depth": s_cfg.depth, "teacher_depth": teacher.config.depth if teacher else None,
        "layer_map": student.layer_map, "dataset": dataset, "data_dir": data_dir, "split": args.split,
        "env": args.env, "num_steps": args.num_steps, "noise_seed": args.noise_seed, "robot_action_dim": robot_dim,
        "units": "robot units (unnormalised actions)", "errors": errors, "seconds": time.monotonic() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_dir(args.out, overwrite=True) as tmp:
        fileio.write_json(tmp / "summary.json", summary)
        title = (f"student L{s_cfg.depth}" + (f" vs teacher L{teacher.config.depth}" if teacher else "")
                 + f" on {dataset}")
        plot(summary, tmp / "action_error.png", title)
    for name, res in errors.items():
        steps = " ".join(f"{v:.4f}" for v in res["mae_per_step"])
        print(f"{name:20s} MAE {res['mae']:.4f}  RMSE {res['rmse']:.4f}  ({res['frames']} frames)  per step: {steps}")
    print(f"wrote {args.out}/summary.json and action_error.png")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
