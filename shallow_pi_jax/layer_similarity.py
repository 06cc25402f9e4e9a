r"""Per-layer input/output cosine similarity of a teacher, across flow times t.

    python -m shallow_pi_jax.layer_similarity --checkpoint shallow_pi_jax/assets/demo_teacher --env demo --out /tmp/sim
    python -m shallow_pi_jax.layer_similarity --checkpoint /ckpt/pi05_libero --env libero --data-dir /data/rlds \
        --dataset libero_10_no_noops --split "train[-10%:]" --tokenizer paligemma_tokenizer.model --out sim

For layer l, the cosine similarity between each token's hidden state before and after the layer,
averaged over valid tokens: the backbone over the prefix tokens (independent of t: the prefix never
attends to the suffix) and the action expert over the action tokens at each t, where
x_t = t·ε + (1−t)·a. A similarity near 1 means the layer barely changes its input, the usual
argument for skipping it; how much it varies with t (and between the two experts) is why plain
layer skipping is fragile and Shallow-π distils instead. Writes OUT/layer_similarity.{json,png,md}.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from shallow_pi_jax import cli


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", "--params", dest="checkpoint", required=True,
                   help="any policy directory: a training run, a student directory, a checkpoint or its params/")
    cli.add_data_flags(p)
    p.add_argument("--times", default="0.05,0.25,0.5,0.75,1.0", help="flow times t, comma-separated")
    p.add_argument("--max-frames", type=int, default=64, help="frames averaged over (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true")
    args = cli.parse(p, argv)
    try:
        times = [float(t) for t in args.times.split(",") if t.strip()]
    except ValueError:
        times = []
    if not times or not all(0.0 <= t <= 1.0 for t in times):
        raise cli.UsageError(f"--times: expected comma-separated values in [0, 1], got {args.times!r}")
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"--out: {args.out} exists (pass --overwrite)")
    # Imported once the flags are parsed, so that --help answers without loading JAX or TensorFlow.
    from shallow_pi_jax.eval.residual_stream import layer_similarity_report

    layer_similarity_report(args.checkpoint, args, args.out, times, max_frames=args.max_frames, seed=args.seed)
    return 0


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
