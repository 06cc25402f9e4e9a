"""Throughput of the full data pipeline, read to batch: `bench_data`'s work.

    bench_data(args)       # args: the command's flags (python -m shallow_pi_jax.bench_data --help)
"""
from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np
from tqdm import tqdm

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


def bench_data(args) -> float:
    """Samples/s of the pipeline the flags describe (a synthetic LIBERO-layout dataset without
    args.data_dir), printed next to what one accelerator host consumes."""
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_dir:
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

