"""Compute openpi-format norm_stats.json (mean, std, q01, q99 of state and action chunks).

From an experiment config (uses its config.data: datasets, horizon, delta mask; writes to each
dataset's `norm_stats` path, or to data.norm_stats_path for all datasets together):

    python -m shallow_pi_jax.compute_norm_stats --config my_experiment.py   # an experiment file with real data paths

Or explicitly:

    python -m shallow_pi_jax.compute_norm_stats --data-dir /data/rlds --dataset libero_10_no_noops \\
        --mapping libero --horizon 50 --out assets/libero/norm_stats.json

A LeRobot dataset (openpi's physical-intelligence/libero; `--data-dir` holds <repo id>/meta/info.json,
default LeRobot's cache ~/.cache/huggingface/lerobot):

    python -m shallow_pi_jax.compute_norm_stats --format lerobot --dataset physical-intelligence/libero \
        --mapping lerobot_libero --horizon 10 --out assets/physical-intelligence/libero/norm_stats.json

`--mapping` is libero, lerobot_libero, droid, droid_velocity or a JSON file with a generic mapping
({"cameras": {...}, "state": [...], "actions": [...], "prompt": [...]}). Statistics are numpy's
over all frames (state) and all rows of every action chunk (actions), as openpi computes them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys

from shallow_pi_jax import cli
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.training import recipes


def bool_mask(text: str) -> tuple[bool, ...]:
    """openpi's make_bool_mask notation: "6,-1" → six True then one False."""
    out = []
    for part in text.split(","):
        try:
            n = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated ints like 6,-1, got {text!r}") from None
        out.extend([n > 0] * abs(n))
    return tuple(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="experiment config file[:arg] whose .data describes the datasets")
    p.add_argument("--data-dir", help="tfds data_dir holding the RLDS dataset (lerobot: the folder holding "
                                      "<repo id>/, or the dataset root; default LeRobot's cache)")
    p.add_argument("--dataset", help="tfds dataset name (optionally name:version), or a LeRobot repo id")
    p.add_argument("--format", default="rlds", choices=("rlds", "lerobot"), help="dataset format (default rlds)")
    p.add_argument("--mapping", default="libero",
                   help="libero | lerobot_libero | droid | droid_velocity | mapping.json")
    p.add_argument("--split", default="train", help="tfds split, or a split of meta/info.json (default: train)")
    p.add_argument("--out", help="output norm_stats.json (or folder); required without --config")
    p.add_argument("--horizon", type=int, default=50, help="action chunk length (default 50, openpi's pi0)")
    p.add_argument("--action-dim", type=int, default=32, help="largest allowed state/action dim (default 32)")
    p.add_argument("--delta-action-mask", type=bool_mask, default=None,
                   help="delta actions, openpi make_bool_mask notation, e.g. 6,-1 (default: none)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (default: all)")
    p.add_argument("--skip-bad-episodes", action="store_true",
                   help="skip (and count) empty or NaN episodes instead of failing")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = cli.parse(p, argv)
    needs_dir = args.format == "rlds"  # a LeRobot dataset defaults to LeRobot's cache
    if args.config is None and ((needs_dir and args.data_dir is None) or args.dataset is None or args.out is None):
        p.error("give either --config or all of --data-dir (rlds), --dataset and --out")
    if args.max_frames is not None and args.max_frames <= 0:
        p.error(f"--max-frames: expected a positive int, got {args.max_frames}")
    return args


def jobs(args) -> list[tuple[DataConfig, tuple[DatasetSpec, ...], str]]:
    """(config, datasets, output path) for each file to write."""
    if args.config is None:
        mapping = args.mapping
        if mapping.endswith(".json"):
            path = pathlib.Path(mapping)
            if not path.is_file():
                raise FileNotFoundError(f"--mapping: {path} does not exist")
            try:
                mapping = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"--mapping: {path} is not valid JSON ({e})") from None
        spec = DatasetSpec(name=args.dataset, data_dir=args.data_dir, mapping=mapping, split=args.split,
                           format=args.format)
        cfg = DataConfig(datasets=(spec,), horizon=args.horizon, action_dim=args.action_dim,
                         delta_action_mask=args.delta_action_mask, skip_bad_episodes=args.skip_bad_episodes,
                         process_index=0, process_count=1)
        return [(cfg, (spec,), args.out)]
    config = recipes.load(args.config)
    cfg = DataConfig.from_any(config.data if "data" in config else config)
    cfg = dataclasses.replace(cfg, process_index=0, process_count=1,
                              skip_bad_episodes=cfg.skip_bad_episodes or args.skip_bad_episodes)
    own = [s for s in cfg.datasets if s.norm_stats]
    shared = tuple(s for s in cfg.datasets if not s.norm_stats)
    out = [(cfg, (s,), s.norm_stats) for s in own]
    if shared:
        path = args.out or cfg.norm_stats_path
        if not path:
            raise ValueError("--out: the config sets neither data.norm_stats_path nor datasets[].norm_stats")
        out.append((cfg, shared, path))
    return out


def main(argv=None) -> list[pathlib.Path]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    todo = jobs(args)
    # Imported once the flags are parsed, so that --help answers without loading TensorFlow.
    from shallow_pi_jax.data.dataset_stats import write_norm_stats

    return [write_norm_stats(cfg, specs, path, args.max_frames, progress=not args.no_progress)
            for cfg, specs, path in todo]


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
