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
import os
import sys

from shallow_pi_jax import cli


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
    if args.data_dir:
        if not (args.dataset and args.norm_stats and args.tokenizer):
            p.error("--data-dir needs --dataset, --norm-stats and --tokenizer")
        for flag in ("data_dir", "norm_stats", "tokenizer"):
            if not os.path.exists(getattr(args, flag)):
                raise FileNotFoundError(f"--{flag.replace('_', '-')}: {getattr(args, flag)} does not exist")
    # Imported once the flags are parsed, so that --help answers without loading TensorFlow.
    from shallow_pi_jax.data.throughput import bench_data

    return bench_data(args)


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
