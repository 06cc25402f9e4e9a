"""The training / evaluation input pipeline: `make_dataset(config.data, train=True)`.

    from shallow_pi_jax.data.pipeline import make_dataset
    it = make_dataset(config.data)        # endless iterator of numpy batches (train=True)
    batch = next(it)                      # see the contract below
    it.num_skipped_episodes               # bad episodes skipped so far (skip_bad_episodes=True)

Batch contract (per process; B = data.batch_size, R = data.image_size, D = data.action_dim):
    {"images": {cam: float32 [B, R, R, 3] in [-1, 1]}, "image_masks": {cam: bool [B]},
     "state": float32 [B, D], "tokenized_prompt": int32 [B, L], "tokenized_prompt_mask": bool [B, L],
     "actions": float32 [B, horizon, D]}
for cam in data.cameras (openpi's base_0_rgb, left_wrist_0_rgb, right_wrist_0_rgb). A camera the
dataset lacks is a black image (-1.0) with mask False, as in openpi's LIBERO policy.

Per dataset: episodes (rlds.py, lerobot.py) → frames (chunking.py) → shuffle buffer (frames, images
still encoded) → decode and resize-with-pad to R. Then the datasets are mixed by weight, each
example gets its own augmentation seed (seed, example index) so runs are reproducible, and batches
are tokenised.
Training repeats forever; evaluation (train=False) reads each episode once, in order, without
augmentation, keeping the last partial batch.
"""
from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
import tensorflow as tf

from shallow_pi_jax.data import chunking, lerobot, rlds, tf_image
from shallow_pi_jax.data import norm_stats as _ns
from shallow_pi_jax.data.config import DataConfig
from shallow_pi_jax.data.episode_log import EpisodeLog
from shallow_pi_jax.data.tokenizer import PaligemmaTokenizer

log = logging.getLogger(__name__)


def _hide_gpus_from_tf():
    # TF must not grab accelerator memory that JAX needs; it only runs the input pipeline.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # already initialised by the caller; nothing to do


def _frames(spec, cfg: DataConfig, train: bool, shard, elog: EpisodeLog, stats):
    reader = lerobot if spec.format == "lerobot" else rlds  # both give episodes in chunking.py's contract
    plan, episodes = reader.episodes(spec, cfg, train=train, shard=shard, elog=elog)
    frames = chunking.chunk_and_normalize(spec, cfg, plan, episodes, stats)
    if train:
        frames = frames.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
    size = cfg.image_size
    mapped = set(plan.camera_paths)

    def decode(frame):
        images, masks = {}, {}
        for cam in cfg.cameras:
            if cam in mapped:
                images[cam] = tf_image.resize_with_pad(tf_image.decode(frame["images"][cam]), size)
                masks[cam] = tf.constant(True)
            else:
                images[cam] = tf.zeros([size, size, 3], tf.uint8)
                masks[cam] = tf.constant(False)
        return {"images": images, "image_masks": masks, "state": frame["state"], "actions": frame["actions"],
                "state_dim": frame["state_dim"], "prompt": frame["prompt"]}

    return frames.map(decode, num_parallel_calls=cfg.num_parallel_calls)


# Stream j shuffles with seed + j * STREAM_SEED_STRIDE: distinct for every stream, also after a resume has
# offset data.seed by its step count (below the stride); stream 0 keeps data.seed itself.
STREAM_SEED_STRIDE = 1 << 20


def _stream(cfg: DataConfig, train: bool, shard: tuple[int, int], elog: EpisodeLog) -> tf.data.Dataset:
    """Examples of shard (index, count) of every dataset, mixed by weight; for training, augmented with
    seeds keyed on (data.seed, index, example index, camera): the same wherever the stream is built."""
    index = shard[0]
    base_seed = cfg.seed
    if train:
        cfg = dataclasses.replace(cfg, seed=cfg.seed + STREAM_SEED_STRIDE * index)
    parts = []
    for spec in cfg.datasets:
        path = cfg.norm_stats_for(spec)
        if path is None:
            raise ValueError(f"data.norm_stats_path: not set for dataset {spec.name!r}; compute it with "
                             "`python -m shallow_pi_jax.compute_norm_stats` and set data.norm_stats_path")
        parts.append(_frames(spec, cfg, train, shard, elog, _ns.load(path)))
    if len(parts) == 1:
        ds = parts[0]
    else:
        weights = np.asarray([s.weight for s in cfg.datasets], np.float64)
        ds = tf.data.Dataset.sample_from_datasets(parts, weights=(weights / weights.sum()).tolist(),
                                                  seed=cfg.seed, stop_on_empty_dataset=False)
    augment = train and cfg.augment

    def finish(i, ex):
        images = {}
        for k, cam in enumerate(cfg.cameras):
            img = ex["images"][cam]
            if augment:
                seed = tf.constant([base_seed, index], tf.int64)
                seed = tf.random.experimental.stateless_fold_in(seed, i)
                seed = tf.random.experimental.stateless_fold_in(seed, k)
                aug = lambda img=img, seed=seed, cam=cam: tf_image.augment(  # noqa: E731
                    tf.cast(img, tf.float32) / 255.0, seed, geometric="wrist" not in cam) * 2.0 - 1.0
                images[cam] = tf.cond(ex["image_masks"][cam], aug, lambda img=img: tf_image.to_model_range(img))
            else:
                images[cam] = tf_image.to_model_range(img)
        return {**ex, "images": images}

    return ds.enumerate().map(finish, num_parallel_calls=cfg.num_parallel_calls)


def build_tf_dataset(cfg, train: bool = True, streams=None) -> tuple[tf.data.Dataset, EpisodeLog]:
    """The tf.data part (everything except tokenisation), batched; for inspection and benchmarks.

    Training: the process's batch is one batch of B / len(streams) examples from each of its streams
    (DataConfig.streams; `streams` overrides which), concatenated in that order. Evaluation reads the
    process's shard of every episode once, in order."""
    cfg = DataConfig.from_any(cfg)
    _hide_gpus_from_tf()
    elog = EpisodeLog()
    if not train:
        ds = _stream(cfg, False, cfg.shard(), elog)
        ds = ds.batch(cfg.batch_size, drop_remainder=False, num_parallel_calls=cfg.num_parallel_calls)
    else:
        ids, total = cfg.streams(streams)
        per = cfg.batch_size // len(ids)
        parts = [_stream(cfg, True, (j, total), elog).batch(per, drop_remainder=True,
                                                             num_parallel_calls=cfg.num_parallel_calls)
                 for j in ids]
        ds = parts[0] if len(parts) == 1 else tf.data.Dataset.zip(tuple(parts)).map(
            lambda *batches: tf.nest.map_structure(lambda *xs: tf.concat(xs, 0), *batches))
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options).prefetch(cfg.prefetch), elog


def tf_error_text(message: str) -> str:
    """A TF runtime error as one line: without TF's graph-node annotations and, for an exception raised
    in a Python function of the pipeline, without its traceback (what was raised is kept)."""
    text = message.split("Traceback (most recent call last):")[0]
    text = re.sub(r"\{\{function_node [^}]*\}\}", "", text)
    text = re.sub(r"\[\[\{\{node [^}]*\}\}\]\]", "", text)
    return " ".join(text.split()).rstrip(" .;:") or "unknown error"


class DataIterator:
    """Numpy batches from the tf.data pipeline, with prompts tokenised in openpi's format."""

    def __init__(self, cfg: DataConfig, ds: tf.data.Dataset, elog: EpisodeLog, tokenizer: PaligemmaTokenizer):
        self.cfg, self._elog, self.tokenizer = cfg, elog, tokenizer
        self._it = ds.as_numpy_iterator()

    def __iter__(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stop the tf.data threads now. Call it before an error leaves the caller.

        Destroying the TF iterator waits for its in-flight map calls, and the episode checks are
        Python (tf.numpy_function): they need the GIL. Left to interpreter shutdown (the traceback of
        an error keeps the iterator alive until then), a worker waiting for the GIL is never let in
        again and the process hangs in the iterator's destructor. Here, while Python still runs, TF
        releases the GIL while it waits, the calls finish and the threads stop."""
        self._it = None

    @property
    def num_skipped_episodes(self) -> int:
        return self._elog.num_skipped

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(self._elog.skipped)

    def __next__(self) -> dict:
        if self._it is None:
            raise ValueError("data: the iterator was closed")
        try:
            ex = next(self._it)
        except tf.errors.OpError as e:
            problem = self._elog.error_for(e.message) or f"data pipeline failed: {tf_error_text(e.message)}"
        else:
            problem = None
        if problem is not None:
            # Raised outside the except block, without the TF error as context: that error's traceback
            # holds the TF iterator, which must not outlive close() (see there).
            raise ValueError(problem)
        prompts = [p.decode("utf-8") for p in ex["prompt"]]
        states = None
        if self.cfg.state_in_prompt:  # pi0.5: normalised state, at the dataset's own dims
            states = [ex["state"][i, : ex["state_dim"][i]] for i in range(len(prompts))]
        tokens, mask = self.tokenizer.tokenize_batch(prompts, states)
        return {
            "images": ex["images"],
            "image_masks": ex["image_masks"],
            "state": ex["state"],
            "tokenized_prompt": tokens,
            "tokenized_prompt_mask": mask,
            "actions": ex["actions"],
        }


def make_dataset(data_config, train: bool = True, streams=None) -> DataIterator:
    """Iterator of numpy batches (see the module docstring); `data_config` is config.data; `streams`:
    which of data.num_streams this process reads (see build_tf_dataset)."""
    cfg = DataConfig.from_any(data_config)
    tokenizer = PaligemmaTokenizer(cfg.tokenizer_path, cfg.max_token_len)
    ds, elog = build_tf_dataset(cfg, train, streams)
    return DataIterator(cfg, ds, elog, tokenizer)
