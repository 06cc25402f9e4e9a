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

import jax
from tqdm import tqdm

from shallow_pi_jax import cli, fileio
from shallow_pi_jax.data.pipeline import make_dataset
from shallow_pi_jax.eval.layer_similarity import format_table, plot, similarity
from shallow_pi_jax.eval.open_loop import add_data_flags, eval_data_config
from shallow_pi_jax.serve.policy import load_checkpoint
from shallow_pi_jax.serve.presets import get_preset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", "--params", dest="checkpoint", required=True,
                   help="any policy directory: a training run, a student directory, a checkpoint or its params/")
    add_data_flags(p)
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
    preset = get_preset(args.env)
    ckpt = load_checkpoint(cli.policy_path(args.checkpoint), preset=preset)
    data_cfg, _, dataset, _ = eval_data_config(args, ckpt, preset)

    def limited(it):
        seen = 0
        for batch in tqdm(it, desc="layer similarity", unit="batch"):
            if seen >= args.max_frames:
                return
            keep = min(len(batch["state"]), args.max_frames - seen)
            seen += keep
            yield jax.tree.map(lambda x: x[:keep], batch)

    res = similarity(ckpt.config, ckpt.params, limited(make_dataset(data_cfg, train=False)), times, args.seed)
    res.update(checkpoint=str(ckpt.root), dataset=dataset, depth=ckpt.config.depth)
    table = format_table(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_dir(args.out, overwrite=True) as tmp:
        fileio.write_json(tmp / "layer_similarity.json", res)
        fileio.write_text(tmp / "layer_similarity.md", table)
        plot(res, tmp / "layer_similarity.png", f"{ckpt.root.name}: L{ckpt.config.depth} on {dataset}")
    print(table)
    print(f"wrote {args.out}/layer_similarity.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
