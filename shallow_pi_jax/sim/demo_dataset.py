"""The demo dataset: scripted-expert episodes of ReachEnv stored as a LIBERO-layout RLDS dataset.

    from shallow_pi_jax.sim.demo_dataset import build_demo_dataset
    demo = build_demo_dataset("/tmp/shallow_pi_demo")      # cached: returns at once when built
    builder = demo.builder()                                # tfds.builder("shallow_pi_demo", data_dir=...)
    ds = builder.as_dataset(split="train")                  # episodes with steps/observation/image ...

Layout of `data_dir` (the whole directory is written under a temporary name and renamed into
place, so a killed build leaves nothing behind):

    shallow_pi_demo/1.0.0/   tfds dataset, split "train", one record per episode (tfds orders
                             them by a hash of the key; episode_metadata/episode_index is i)
    tokenizer.model          sentencepiece model (pad 0, eos 1, bos 2, unk 3, byte fallback)
    demo_info.json           build parameters and counts; a matching one means "already built"

Each step holds `observation/{image, wrist_image}` (uint8 [S, S, 3], PNG), `observation/state`
(float32 [2], end-effector x, y), `action` (float32 [2], velocity in [-1, 1]),
`language_instruction`, and RLDS's `is_first`, `is_last`, `is_terminal`, `reward`, `discount`.
Only successful expert episodes are stored (reward 1 on the last step, which is terminal).
Episode i is `ReachEnv.reset((DEMO_STREAM, seed, i))` (i counts expert attempts; the seed of each
stored episode is in `episode_metadata/reset_seed`); integer reset seeds, as a closed-loop
evaluation uses, draw unrelated scenes.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pathlib
import shutil
import uuid
from collections.abc import Callable, Iterator

import numpy as np

from shallow_pi_jax.fileio import cache_dir
from shallow_pi_jax.sim.demo_tokenizer import TOKENIZER_VOCAB, train_tokenizer
from shallow_pi_jax.sim.env import ACTION_DIM, STATE_DIM, ReachConfig, ReachEnv
from shallow_pi_jax.sim.expert import expert_episode

DATASET_NAME = "shallow_pi_demo"
VERSION = "1.0.0"
TOKENIZER_FILE = "tokenizer.model"
INFO_FILE = "demo_info.json"
DEMO_STREAM = 0x5D  # first entropy word of demo episode seeds, keeps them apart from evaluation seeds
GENERATOR_VERSION = 2  # bump when anything that changes the stored bytes changes
NOISE_STD = 0.1
# Scenes, not frames, are what a from-scratch transformer can memorise: with 300 episodes (3.7k
# frames, but only 300 layouts) it learned each scene's target by heart (train action error 0.014,
# held-out 0.094 = the variance, i.e. nothing learned). With 3000 it generalises.
DEFAULT_EPISODES = 3000


@dataclasses.dataclass(frozen=True)
class DemoDataset:
    data_dir: pathlib.Path
    info: dict

    name: str = DATASET_NAME
    version: str = VERSION

    @property
    def tokenizer_path(self) -> pathlib.Path:
        return self.data_dir / TOKENIZER_FILE

    def builder(self):
        import tensorflow_datasets as tfds

        return tfds.builder(f"{self.name}:{self.version}", data_dir=str(self.data_dir))


def default_data_dir() -> pathlib.Path:
    """Where `make_demo_dataset` writes the demo dataset by default ($SHALLOW_PI_DEMO_DIR overrides)."""
    return pathlib.Path(os.environ.get("SHALLOW_PI_DEMO_DIR", "~/.cache/shallow_pi_jax/demo")).expanduser()


def cached_demo_dataset() -> DemoDataset:
    """The demo dataset of the embedded default, built on first use under `cache_dir()`."""
    # Our own cache: a build from an older generator is replaced (with its norm stats) rather than refused.
    return build_demo_dataset(cache_dir() / "demo_data", overwrite=True)


def _features(image_size: int):
    import tensorflow_datasets as tfds

    image = tfds.features.Image(shape=(image_size, image_size, 3), dtype=np.uint8, encoding_format="png")
    return tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": tfds.features.FeaturesDict({
                "image": image,
                "wrist_image": image,
                "state": tfds.features.Tensor(shape=(STATE_DIM,), dtype=np.float32),
            }),
            "action": tfds.features.Tensor(shape=(ACTION_DIM,), dtype=np.float32),
            "discount": tfds.features.Scalar(dtype=np.float32),
            "reward": tfds.features.Scalar(dtype=np.float32),
            "is_first": tfds.features.Scalar(dtype=np.bool_),
            "is_last": tfds.features.Scalar(dtype=np.bool_),
            "is_terminal": tfds.features.Scalar(dtype=np.bool_),
            "language_instruction": tfds.features.Text(),
        }),
        "episode_metadata": tfds.features.FeaturesDict({
            "file_path": tfds.features.Text(),
            "episode_index": tfds.features.Scalar(dtype=np.int64),
            "reset_seed": tfds.features.Tensor(shape=(3,), dtype=np.int64),  # ReachEnv.reset(seed) replays it
        }),
    })


def _as_rlds(episode: dict, index: int) -> dict:
    n = len(episode["action"])
    last = np.arange(n) == n - 1
    return {
        "steps": {
            "observation": {"image": episode["image"], "wrist_image": episode["wrist_image"],
                            "state": episode["state"]},
            "action": episode["action"],
            "discount": np.ones(n, np.float32),
            "reward": last.astype(np.float32),  # the expert episodes kept all end in success
            "is_first": np.arange(n) == 0,
            "is_last": last,
            "is_terminal": last,
            "language_instruction": [episode["instruction"]] * n,
        },
        "episode_metadata": {"file_path": f"{DATASET_NAME}/episode_{index:05d}", "episode_index": index,
                             "reset_seed": np.asarray(episode["reset_seed"], np.int64)},
    }


def iter_demo_episodes(num_episodes: int, seed: int = 0, image_size: int = 64,
                       config: ReachConfig | None = None, stats: dict | None = None) -> Iterator[dict]:
    """Yields `num_episodes` successful expert episodes (see expert.expert_episode), in order.

    Failed attempts (rare: expert noise) are skipped and counted in stats["failed"].
    """
    env = ReachEnv(seed=0, image_size=image_size, config=config)
    attempt, kept = 0, 0
    while kept < num_episodes:
        reset_seed = (DEMO_STREAM, seed, attempt)
        episode = expert_episode(env, reset_seed, noise_std=NOISE_STD)
        episode["reset_seed"] = reset_seed
        attempt += 1
        if not episode["success"]:
            if stats is not None:
                stats["failed"] = stats.get("failed", 0) + 1
            if attempt > 2 * num_episodes + 100:
                raise RuntimeError(f"the scripted expert failed {attempt - kept} of {attempt} episodes")
            continue
        if stats is not None:
            stats["steps"] = stats.get("steps", 0) + len(episode["action"])
        yield episode
        kept += 1


def _params(num_episodes: int, seed: int, image_size: int, config: ReachConfig) -> dict:
    return {"num_episodes": num_episodes, "seed": seed, "image_size": image_size,
            "generator_version": GENERATOR_VERSION, "noise_std": NOISE_STD,
            "tokenizer_vocab": TOKENIZER_VOCAB, "env": dataclasses.asdict(config)}


def _read_info(data_dir: pathlib.Path) -> dict | None:
    try:
        return json.loads((data_dir / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def build_demo_dataset(data_dir=None, num_episodes: int = DEFAULT_EPISODES, seed: int = 0, image_size: int = 64,
                       overwrite: bool = False,
                       progress: Callable[[Iterator], Iterator] | None = None) -> DemoDataset:
    """Writes the demo dataset and tokenizer to `data_dir` (see the module docstring) and returns it.

    Deterministic: the same arguments give identical arrays and tokenizer bytes. Cached: if
    `data_dir` already holds a complete build with the same parameters it is returned untouched.
    A different build there is an error unless `overwrite`. `progress` wraps the episode iterator
    (e.g. a tqdm factory) to show progress.
    """
    if not isinstance(num_episodes, (int, np.integer)) or num_episodes < 1:
        raise ValueError(f"num_episodes: expected an int >= 1, got {num_episodes!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    config = ReachConfig(image_size=int(image_size))  # validates image_size
    data_dir = pathlib.Path(data_dir if data_dir is not None else default_data_dir()).expanduser().absolute()
    params = _params(int(num_episodes), int(seed), int(image_size), config)

    info = _read_info(data_dir)
    if info is not None and info.get("params") == params:
        return DemoDataset(data_dir, info)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # Two processes asking for the same build at once (two trainers started together, parallel test
    # workers): the second waits for the first and takes its result instead of building it again. The
    # lock is the parent directory itself, so nothing is left beside the dataset.
    parent = os.open(data_dir.parent, os.O_RDONLY)
    try:
        fcntl.flock(parent, fcntl.LOCK_EX)
        info = _read_info(data_dir)
        if info is not None and info.get("params") == params:
            return DemoDataset(data_dir, info)
        return _build(data_dir, params, config, overwrite, progress)
    finally:
        os.close(parent)  # releases the lock


def _build(data_dir: pathlib.Path, params: dict, config: ReachConfig, overwrite: bool,
           progress: Callable[[Iterator], Iterator] | None) -> DemoDataset:
    if data_dir.exists() and any(data_dir.iterdir()) and not overwrite:
        what = "a demo dataset with other parameters" if _read_info(data_dir) is not None else "other files"
        raise ValueError(f"data_dir: {data_dir} holds {what}; pass overwrite=True (--overwrite) or another directory")

    import tensorflow_datasets as tfds

    tmp = data_dir.parent / f".{data_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        stats: dict = {"steps": 0, "failed": 0}
        episodes = iter_demo_episodes(params["num_episodes"], params["seed"], params["image_size"], config, stats)
        if progress is not None:
            episodes = progress(episodes)
        examples = ((f"{i:05d}", _as_rlds(ep, i)) for i, ep in enumerate(episodes))
        tfds.dataset_builders.store_as_tfds_dataset(
            name=DATASET_NAME, version=VERSION, features=_features(params["image_size"]),
            split_datasets={"train": examples}, data_dir=str(tmp),
            description="Scripted-expert demonstrations of shallow_pi_jax's ReachEnv (LIBERO RLDS layout).")
        shutil.rmtree(tmp / "downloads", ignore_errors=True)  # empty scratch space tfds creates
        (tmp / TOKENIZER_FILE).write_bytes(train_tokenizer(params["tokenizer_vocab"]))
        info = {"params": params, "num_episodes": params["num_episodes"], "num_steps": stats["steps"],
                "failed_expert_attempts": stats["failed"], "dataset": DATASET_NAME, "version": VERSION,
                "state_dim": STATE_DIM, "action_dim": ACTION_DIM, "tokenizer": TOKENIZER_FILE}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        _move_into_place(tmp, data_dir, params)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = _read_info(data_dir)
    return DemoDataset(data_dir, info)


def _move_into_place(tmp: pathlib.Path, data_dir: pathlib.Path, params: dict) -> None:
    old = None
    if data_dir.exists() and any(data_dir.iterdir()):
        current = _read_info(data_dir)
        if current is not None and current.get("params") == params:
            return  # another process finished the same build first
        old = data_dir.parent / f".{data_dir.name}.old-{uuid.uuid4().hex[:8]}"
        data_dir.rename(old)
    try:
        os.replace(tmp, data_dir)  # an empty directory in the way is replaced atomically
    except OSError:
        current = _read_info(data_dir)
        if current is None or current.get("params") != params:
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
