r"""Offline evaluation: action error of a student (and optionally its teacher) on held-out episodes,
per step of the action chunk, against the ground truth and against the teacher.

    # the demo: held-out ReachEnv episodes (reset seeds disjoint from the training set), built offline
    python tools/evaluate.py --checkpoint /tmp/l6_demo/student --teacher shallow_pi_jax/assets/demo_teacher \
        --env demo --out /tmp/l6_demo/eval
    # a real dataset: hold out the last 10 % of episodes (any tfds split expression)
    python tools/evaluate.py --checkpoint runs/l6/student --teacher /ckpt/pi05_libero --env libero \
        --data-dir /data/rlds --dataset libero_10_no_noops --split "train[-10%:]" \
        --tokenizer /ckpt/paligemma_tokenizer.model --out runs/l6/eval

Writes OUT/summary.json and OUT/action_error.png (all or nothing). Errors are in robot units
(actions unnormalised with the checkpoint's norm stats, sliced to the robot's dims): mean absolute
error and RMSE per horizon step, averaged over frames and action dims, plus per-dim MAE. Student
and teacher see the same batches and the same noise (--noise-seed), so their difference is the
distillation's, not the sampler's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

try:
    import shallow_pi_jax  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import numpy as np
from tqdm import tqdm

from shallow_pi_jax.data import norm_stats as ns
from shallow_pi_jax.data import transforms as data_transforms
from shallow_pi_jax.serve.policy import Policy, demo_tokenizer_path, load_checkpoint, serving_data_config
from shallow_pi_jax.serve.presets import get_preset

HELD_OUT_SEED = 1  # the demo training set is built with seed 0; seed 1 draws unrelated scenes


def held_out_demo_dataset(num_episodes: int, cache: pathlib.Path | None = None):
    from shallow_pi_jax import demo
    from shallow_pi_jax.sim.demo_dataset import build_demo_dataset

    cache = cache or demo.cache_dir() / f"demo_eval_seed{HELD_OUT_SEED}_{num_episodes}"
    return build_demo_dataset(cache, num_episodes=num_episodes, seed=HELD_OUT_SEED)


class ErrorAccumulator:
    """Sums of |e| and e² per (horizon step, dim) over frames."""

    def __init__(self):
        self.abs = self.sq = None
        self.frames = 0

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        err = np.asarray(pred, np.float64) - np.asarray(target, np.float64)  # [B, H, A]
        if self.abs is None:
            self.abs, self.sq = np.zeros(err.shape[1:]), np.zeros(err.shape[1:])
        self.abs += np.abs(err).sum(0)
        self.sq += np.square(err).sum(0)
        self.frames += err.shape[0]

    def summary(self) -> dict:
        mae = self.abs / self.frames
        mse = self.sq / self.frames
        return {"mae_per_step": mae.mean(1).tolist(), "rmse_per_step": np.sqrt(mse.mean(1)).tolist(),
                "mae_per_dim": mae.mean(0).tolist(), "mae": float(mae.mean()), "rmse": float(np.sqrt(mse.mean())),
                "frames": self.frames}


def evaluate(student: Policy, teacher: Policy | None, batches, unnormalize, max_frames: int | None = None,
             noise_seed: int = 0, progress: bool = True) -> dict:
    """Run both policies over model-input batches that carry ground-truth `actions`."""
    acc = {"student_vs_truth": ErrorAccumulator()}
    if teacher is not None:
        acc["teacher_vs_truth"], acc["student_vs_teacher"] = ErrorAccumulator(), ErrorAccumulator()
    rng = np.random.default_rng(noise_seed)
    seen = 0
    bar = tqdm(total=max_frames, desc="evaluating", unit="frame", disable=not progress)
    for batch in batches:
        if max_frames is not None and seen >= max_frames:
            break
        if max_frames is not None and seen + len(batch["state"]) > max_frames:
            keep = max_frames - seen
            batch = jax.tree.map(lambda x: x[:keep], batch)
        b = len(batch["state"])
        noise = rng.standard_normal((b, student.config.action_horizon, student.config.action_dim)).astype(np.float32)
        truth = unnormalize(batch["actions"])
        pred = unnormalize(student.sample(batch, noise))
        acc["student_vs_truth"].add(pred, truth)
        if teacher is not None:
            t_pred = unnormalize(teacher.sample(batch, noise))
            acc["teacher_vs_truth"].add(t_pred, truth)
            acc["student_vs_teacher"].add(pred, t_pred)
        seen += b
        bar.update(b)
    bar.close()
    if seen == 0:
        raise ValueError("dataset: no frames to evaluate (empty split?)")
    return {k: v.summary() for k, v in acc.items()}


def plot(summary: dict, path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, res in summary["errors"].items():
        steps = np.arange(1, len(res["mae_per_step"]) + 1)
        axes[0].plot(steps, res["mae_per_step"], marker="o", label=name.replace("_", " "))
        axes[1].plot(steps, res["rmse_per_step"], marker="o", label=name.replace("_", " "))
    for ax, what in zip(axes, ("mean absolute error", "RMSE")):
        ax.set_xlabel("action chunk step")
        ax.set_ylabel(f"{what} (robot units)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def eval_data_config(args, ckpt, preset):
    """(DataConfig, norm stats path, dataset name, data_dir) of the held-out data named by the flags."""
    if args.data_dir is None:
        if args.env != "demo":
            raise ValueError("--data-dir and --dataset: required for a real dataset")
        ds = held_out_demo_dataset(args.episodes)
        data_dir, dataset, tokenizer = str(ds.data_dir), ds.name, args.tokenizer or str(ds.tokenizer_path)
    else:
        if not args.dataset:
            raise ValueError("--dataset: required with --data-dir")
        data_dir, dataset = args.data_dir, args.dataset
        tokenizer = args.tokenizer or (str(demo_tokenizer_path()) if args.env == "demo" else None)
        if not tokenizer:
            raise ValueError("--tokenizer: required (the PaliGemma sentencepiece model)")
    stats_path = args.norm_stats or ckpt.norm_stats
    if stats_path is None:
        raise ValueError(f"--norm-stats: {ckpt.root}/assets has no norm_stats.json")
    data_cfg = serving_data_config(ckpt.config, preset, tokenizer_path=tokenizer, norm_stats_path=stats_path)
    spec = dataclasses.replace(data_cfg.datasets[0], name=dataset, data_dir=data_dir, split=args.split)
    return dataclasses.replace(data_cfg, datasets=(spec,), batch_size=args.batch_size), stats_path, dataset, data_dir


def add_data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="demo", help="robot preset: demo, libero, droid, aloha (default: demo)")
    p.add_argument("--data-dir", default=None, help="tfds data_dir of the RLDS dataset (default for demo: "
                                                     "held-out demo episodes built offline)")
    p.add_argument("--dataset", default=None, help="tfds dataset name")
    p.add_argument("--split", default="train", help="tfds split of held-out episodes, e.g. 'train[-10%%:]'")
    p.add_argument("--episodes", type=int, default=20, help="held-out demo episodes (demo only; default 20)")
    p.add_argument("--tokenizer", default=None, help="sentencepiece model (default for demo: the demo's)")
    p.add_argument("--norm-stats", default=None, help="norm_stats.json (default: the checkpoint's assets/)")
    p.add_argument("--batch-size", type=int, default=16)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="student checkpoint directory")
    p.add_argument("--teacher", default=None, help="teacher checkpoint directory (optional)")
    add_data_flags(p)
    p.add_argument("--max-frames", type=int, default=512, help="frames evaluated (default 512; 0 = all)")
    p.add_argument("--num-steps", type=int, default=10, help="flow integration steps (default: 10)")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, required=True, help="output directory (summary.json, action_error.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        preset = get_preset(args.env)
        if args.out.exists() and not args.overwrite:
            raise ValueError(f"--out: {args.out} exists (pass --overwrite)")
        student = load_checkpoint(args.checkpoint, preset=preset)
        teacher = load_checkpoint(args.teacher, preset=preset,
                                  action_horizon=None if (pathlib.Path(args.teacher) / "model_config.json").exists()
                                  else student.config.action_horizon,
                                  max_token_len=None if (pathlib.Path(args.teacher) / "model_config.json").exists()
                                  else student.config.max_token_len) if args.teacher else None
        s_cfg = student.config
        if teacher is not None:
            for field in ("pi05", "action_horizon", "action_dim", "max_token_len", "image_keys", "image_size"):
                if getattr(teacher.config, field) != getattr(s_cfg, field):
                    raise ValueError(f"teacher.{field}: {getattr(teacher.config, field)} differs from the student's "
                                     f"{getattr(s_cfg, field)}; they must read the same inputs")
        data_cfg, stats_path, dataset, data_dir = eval_data_config(args, student, preset)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from shallow_pi_jax.data import make_dataset

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
    tmp = pathlib.Path(tempfile.mkdtemp(dir=args.out.parent, prefix=f".{args.out.name}."))
    try:
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        title = f"student L{s_cfg.depth}" + (f" vs teacher L{teacher.config.depth}" if teacher else "") + f" on {dataset}"
        plot(summary, tmp / "action_error.png", title)
        if args.out.exists():
            shutil.rmtree(args.out)
        os.replace(tmp, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, res in errors.items():
        steps = " ".join(f"{v:.4f}" for v in res["mae_per_step"])
        print(f"{name:20s} MAE {res['mae']:.4f}  RMSE {res['rmse']:.4f}  ({res['frames']} frames)  per step: {steps}")
    print(f"wrote {args.out}/summary.json and action_error.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
