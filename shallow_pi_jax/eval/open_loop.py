"""Open-loop evaluation: a student's (and its teacher's) action error on held-out frames.

Errors per step of the action chunk, against the ground truth and against the teacher, in robot
units; both policies see the same batches and the same noise, so their difference is the
distillation's, not the sampler's. The command line is `python -m shallow_pi_jax.evaluate`
(`evaluate_checkpoints` is its work); the held-out data is named by cli.add_data_flags' flags.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

from shallow_pi_jax import cli, fileio
from shallow_pi_jax.checkpoint import policy_dir, policy_record
from shallow_pi_jax.data import norm_stats as ns
from shallow_pi_jax.data import transforms as data_transforms
from shallow_pi_jax.data.pipeline import make_dataset
from shallow_pi_jax.serve.policy import Checkpoint, Policy, demo_tokenizer_path, load_checkpoint, serving_data_config
from shallow_pi_jax.serve.presets import EnvPreset, get_preset
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


def load_teacher(path, student: Checkpoint, preset: EnvPreset) -> Checkpoint:
    """The teacher; an openpi checkpoint records no horizon or prompt length: it reads the student's."""
    path = cli.policy_path(path)
    recorded = policy_dir.read(path).config is not None
    s = student.config
    return load_checkpoint(path, preset=preset, action_horizon=None if recorded else s.action_horizon,
                           max_token_len=None if recorded else s.max_token_len)


def evaluate_checkpoints(checkpoint, teacher, data, out: pathlib.Path, *, max_frames: int | None = 512,
                         num_steps: int = 10, noise_seed: int = 0) -> dict:
    """Evaluate the student at `checkpoint` (and the `teacher`, if given) on the held-out data the
    flags `data` name (eval_data_config); write OUT/summary.json and OUT/action_error.png, all or
    nothing. Returns the summary."""
    preset = get_preset(data.env)
    student = load_checkpoint(cli.policy_path(checkpoint), preset=preset)
    teacher = load_teacher(teacher, student, preset) if teacher else None
    s_cfg = student.config
    if teacher is not None:
        for field in ("pi05", "action_horizon", "action_dim", "max_token_len", "image_keys", "image_size"):
            if getattr(teacher.config, field) != getattr(s_cfg, field):
                raise ValueError(f"teacher.{field}: {getattr(teacher.config, field)} differs from the student's "
                                 f"{getattr(s_cfg, field)}; they must read the same inputs")
        # Both are fed the student's batches: the teacher must see the world as the student's record says.
        policy_record.check_same(student.record, f"the student's record ({student.root})", teacher.record,
                                 f"the teacher's ({teacher.record.source or teacher.root})")
    data_cfg, stats_path, dataset, data_dir = eval_data_config(data, student, preset)

    out_tf = data_transforms.make_output_transform(data_cfg)
    stats = ns.load(stats_path)["actions"]
    robot_dim = out_tf.action_dim

    def unnormalize(actions):
        # Delta actions need no state here: the same state is added to prediction and truth.
        return ns.unnormalize(np.asarray(actions), stats, data_cfg.quantile_norm)[..., :robot_dim]

    student_policy = Policy(s_cfg, student.params, num_steps=num_steps)
    teacher_policy = Policy(teacher.config, teacher.params, num_steps=num_steps) if teacher else None
    start = time.monotonic()
    errors = evaluate(student_policy, teacher_policy, make_dataset(data_cfg, train=False),
                      unnormalize, max_frames, noise_seed)
    summary = {
        "student": str(student.root), "teacher": str(teacher.root) if teacher else None,
        "student_depth": s_cfg.depth, "teacher_depth": teacher.config.depth if teacher else None,
        "layer_map": student.layer_map, "dataset": dataset, "data_dir": data_dir, "split": data.split,
        "env": data.env, "num_steps": num_steps, "noise_seed": noise_seed, "robot_action_dim": robot_dim,
        "units": "robot units (unnormalised actions)", "errors": errors, "seconds": time.monotonic() - start,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_dir(out, overwrite=True) as tmp:
        fileio.write_json(tmp / "summary.json", summary)
        title = (f"student L{s_cfg.depth}" + (f" vs teacher L{teacher.config.depth}" if teacher else "")
                 + f" on {dataset}")
        plot(summary, tmp / "action_error.png", title)
    for name, res in errors.items():
        steps = " ".join(f"{v:.4f}" for v in res["mae_per_step"])
        print(f"{name:20s} MAE {res['mae']:.4f}  RMSE {res['rmse']:.4f}  ({res['frames']} frames)  per step: {steps}")
    print(f"wrote {out}/summary.json and action_error.png")
    return summary
