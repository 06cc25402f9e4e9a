"""Open-loop evaluation: a student's (and its teacher's) action error on held-out frames.

Errors per step of the action chunk, against the ground truth and against the teacher, in robot
units; both policies see the same batches and the same noise, so their difference is the
distillation's, not the sampler's. The command line is `python -m shallow_pi_jax.evaluate`.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib

import jax
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

from shallow_pi_jax.serve.policy import Policy, demo_tokenizer_path, serving_data_config
from shallow_pi_jax.sim.demo_dataset import build_demo_dataset, cache_dir

matplotlib.use("Agg")

HELD_OUT_SEED = 1  # the demo training set is built with seed 0; seed 1 draws unrelated scenes


def held_out_demo_dataset(num_episodes: int, cache: pathlib.Path | None = None):
    cache = cache or cache_dir() / f"demo_eval_seed{HELD_OUT_SEED}_{num_episodes}"
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
    # As the checkpoint's record says (state in the prompt, delta actions, norm type): what it was trained on.
    data_cfg = serving_data_config(ckpt.config, preset, tokenizer_path=tokenizer, norm_stats_path=stats_path,
                                   record=ckpt.record)
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
