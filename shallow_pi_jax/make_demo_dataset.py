"""Writes the demo dataset: scripted-expert episodes of the reach task as LIBERO-layout RLDS.

    python -m shallow_pi_jax.make_demo_dataset --data-dir /tmp/shallow_pi_demo
    python -m shallow_pi_jax.make_demo_dataset --data-dir /tmp/demo_small --num-episodes 50 --image-size 32

Then read it with `tfds.builder("shallow_pi_demo", data_dir=DATA_DIR)` (or the data pipeline's
"libero" mapping) and tokenize with DATA_DIR/tokenizer.model. The build is deterministic and
cached: rerunning with the same arguments returns at once. See docs/sim.md.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

from shallow_pi_jax import cli
from shallow_pi_jax.sim import demo_dataset


def _dir_size(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", "--data_dir", dest="data_dir", default=str(demo_dataset.default_data_dir()),
                        help="output folder (holds shallow_pi_demo/1.0.0/, tokenizer.model, demo_info.json); "
                             "default $SHALLOW_PI_DEMO_DIR or ~/.cache/shallow_pi_jax/demo")
    parser.add_argument("--num-episodes", "--num_episodes", dest="num_episodes", type=int,
                        default=demo_dataset.DEFAULT_EPISODES,
                        help=f"successful expert episodes to store (default {demo_dataset.DEFAULT_EPISODES})")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (episode i uses reset seed (0x5D, seed, i))")
    parser.add_argument("--image-size", "--image_size", dest="image_size", type=int, default=64,
                        help="square camera resolution in pixels (default 64)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different build (or other files) in --data-dir")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = cli.parse(parser, argv)

    # Deferred like sim.demo_dataset does: TensorFlow's start-up is only paid for a build.
    import tensorflow_datasets as tfds
    from tqdm import tqdm

    tfds.disable_progress_bar()  # ours covers the work; tfds' own bars would interleave with it
    start = time.perf_counter()
    demo = demo_dataset.build_demo_dataset(
        args.data_dir, num_episodes=args.num_episodes, seed=args.seed, image_size=args.image_size,
        overwrite=args.overwrite,
        progress=lambda it: tqdm(it, total=args.num_episodes, desc="expert episodes", unit="episode",
                                 disable=args.quiet))
    seconds = time.perf_counter() - start
    info = demo.info
    print(f"{demo.name}:{demo.version} in {demo.data_dir}: {info['num_episodes']} episodes, "
          f"{info['num_steps']} steps, {_dir_size(demo.data_dir) / 2**20:.1f} MiB, {seconds:.1f} s")
    print(f"tokenizer: {demo.tokenizer_path}")
    return 0


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
