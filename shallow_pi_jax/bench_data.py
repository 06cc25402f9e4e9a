"""Throughput of the full data pipeline (read → decode → resize → augment → tokenise → batch).

    python -m shallow_pi_jax.bench_data                       # synthetic LIBERO-layout RLDS, 256x256 JPEGs → 224
    python -m shallow_pi_jax.bench_data --data-dir /data/rlds --dataset libero_10_no_noops \\
        --norm-stats assets/ns.json \\
        --tokenizer paligemma_tokenizer.model

Without --data-dir it writes a synthetic dataset in the LIBERO RLDS layout (2 cameras, JPEG-encoded
like the real one) to a temporary folder. Prints samples/s after a warm-up, next to the rate one
accelerator host consumes when training at openpi-like speeds (see docs/data.md for the numbers).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

from shallow_pi_jax import cli
from shallow_pi_jax.data import norm_stats as _ns
from shallow_pi_jax.data import synthetic
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.data.pipeline import make_dataset

# Training FLOPs per sample (forward + backward ≈ 3x forward) of full pi0 fine-tuning, 3 camera
# slots through SigLIP (openpi encodes masked cameras too), 48 prompt tokens, horizon 50:
# SigLIP 0.4 B x 768 tokens + Gemma 2 B x 816 tokens + expert 0.3 B x 51 tokens, 2 FLOPs/param/token.
_TRAIN_TFLOP_PER_SAMPLE = 3 * 2 * (0.4e9 * 768 + 1.98e9 * 816 + 0.3e9 * 51) / 1e12
_H100_BF16_TFLOPS, _MFU = 989.0, 0.4


def _smooth_image(rng, size):
    # Gradients plus noise: compresses like a camera frame (not like pure noise or a flat colour).
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([x, y, (x + y) / 2], -1) * rng.uniform(100, 255)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def write_synthetic(root: str, episodes: int, steps: int, size: int) -> tuple[str, str, str]:
    rng = np.random.default_rng(0)
    eps = []
    for e in tqdm(range(episodes), desc="synthetic episodes"):
        frames = [_smooth_image(rng, size) for _ in range(4)]
        ep = synthetic.libero_episode(rng, steps, image_hw=(1, 1), index=e)
        for t, step in enumerate(ep["steps"]):
            step["observation"]["image"] = frames[t % 4]
            step["observation"]["wrist_image"] = frames[(t + 2) % 4]
        eps.append(ep)
    synthetic.write_dataset("bench_libero", root, synthetic.libero_features(image_hw=(size, size), encoding="jpeg"),
                            eps)
    tok = synthetic.train_tokenizer(f"{root}/tok.model")
    ident = lambda n: _ns.NormStats(np.zeros(n), np.ones(n), -np.ones(n), np.ones(n))  # noqa: E731
    stats = _ns.save({"state": ident(8), "actions": ident(7)}, f"{root}/norm_stats.json")
    return "bench_libero", tok, str(stats)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="existing tfds data_dir (default: write a synthetic dataset)")
    p.add_argument("--dataset", help="tfds name in --data-dir")
    p.add_argument("--mapping", default="libero", help="mapping of the existing dataset (default libero)")
    p.add_argument("--norm-stats", help="norm_stats.json for the existing dataset")
    p.add_argument("--tokenizer", help="sentencepiece model for the existing dataset")
    p.add_argument("--episodes", type=int, default=24, help="synthetic episodes (default 24)")
    p.add_argument("--steps", type=int, default=60, help="synthetic steps per episode (default 60)")
    p.add_argument("--source-size", type=int, default=256, help="synthetic camera resolution (LIBERO: 256)")
    p.add_argument("--image-size", type=int, default=224, help="model resolution R (default 224)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32, openpi's)")
    p.add_argument("--horizon", type=int, default=50)
    p.add_argument("--batches", type=int, default=20, help="timed batches (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first (default 3)")
    p.add_argument("--no-augment", action="store_true", help="time without training augmentation")
    p.add_argument("--pi05", action="store_true", help="pi0.5 prompt format and quantile norm")
    args = cli.parse(p, argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        if args.data_dir:
            if not (args.dataset and args.norm_stats and args.tokenizer):
                p.error("--data-dir needs --dataset, --norm-stats and --tokenizer")
            for flag in ("data_dir", "norm_stats", "tokenizer"):
                if not os.path.exists(getattr(args, flag)):
                    raise FileNotFoundError(f"--{flag.replace('_', '-')}: {getattr(args, flag)} does not exist")
            name, data_dir, tok, stats = args.dataset, args.data_dir, args.tokenizer, args.norm_stats
        else:
            name, tok, stats = write_synthetic(tmp, args.episodes, args.steps, args.source_size)
            data_dir = tmp
        cfg = DataConfig(datasets=(DatasetSpec(name, data_dir, args.mapping),), batch_size=args.batch_size,
                         horizon=args.horizon, image_size=args.image_size, tokenizer_path=tok, norm_stats_path=stats,
                         pi05=args.pi05, max_token_len=200 if args.pi05 else 48, augment=not args.no_augment,
                         shuffle_buffer=2000, process_index=0, process_count=1)
        it = make_dataset(cfg, train=True)
        for _ in range(args.warmup):
            next(it)
        start = time.perf_counter()
        for _ in tqdm(range(args.batches), desc="timed batches"):
            next(it)
        elapsed = time.perf_counter() - start
    rate = args.batches * args.batch_size / elapsed
    per_gpu = _H100_BF16_TFLOPS * _MFU / _TRAIN_TFLOP_PER_SAMPLE

    print(f"pipeline: {rate:.1f} samples/s ({rate / (os.cpu_count() or 1):.1f} per CPU core, {os.cpu_count()} cores), "
          f"R={args.image_size}, 2 cameras, batch {args.batch_size}, augment={not args.no_augment}")
    print(f"consumer estimate: pi0 full fine-tune ≈ {_TRAIN_TFLOP_PER_SAMPLE:.1f} TFLOP/sample → "
          f"≈ {per_gpu:.0f} samples/s per H100 at {_MFU:.0%} MFU, ≈ {8 * per_gpu:.0f} samples/s per 8-GPU host")
    return rate


if __name__ == "__main__":
    sys.exit(cli.run(main))
