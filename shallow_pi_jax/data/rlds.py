"""RLDS episodes (tensorflow-datasets) → per-frame examples with action chunks, as tf.data.

One dataset's stream: read episodes (`tfds.builder(name, data_dir=...)`, this process's share of
the split, files shuffled with the seed) → keep only the mapped fields, images still encoded →
check each episode (empty, NaN/inf in state or actions) → action chunks of `horizon` future steps
clamped at the episode end → optional delta actions → normalise → pad to the model's dims →
frames. Images are decoded later, after the shuffle buffer (see pipeline.py).

Field problems that hold for every episode (missing feature, wrong dtype or shape) are found from
the dataset's feature spec before reading and raise a ValueError naming the dataset and field.
"""
from __future__ import annotations

import dataclasses
import logging
import threading

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from shallow_pi_jax.data import norm_stats as _ns
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.data.mappings import Mapping

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class FieldPlan:
    """What the feature spec says about the mapped fields."""
    camera_paths: dict[str, tuple[str, ...]]
    state_dims: tuple[int | None, ...]
    action_dims: tuple[int | None, ...]
    prompt_paths: tuple[str, ...]
    specs: dict[str, tf.TensorSpec]           # per-step spec of every mapped path (images still encoded)
    has_file_path: bool

    @property
    def state_dim(self) -> int | None:
        return None if None in self.state_dims else sum(self.state_dims)

    @property
    def action_dim(self) -> int | None:
        return None if None in self.action_dims else sum(self.action_dims)


class EpisodeLog:
    """Counts and remembers skipped bad episodes; keeps the message of a fatal one."""

    def __init__(self):
        self._lock = threading.Lock()
        self.skipped: dict[str, int] = {}      # reason kind → episodes skipped
        self.skipped_ids: list[str] = []
        self.errors: list[str] = []           # fatal problems, in the order the checks ran

    def fail(self, message: str):
        with self._lock:
            self.errors.append(message)
        raise ValueError(message)

    def error_for(self, tf_message: str) -> str | None:
        """The recorded problem TF reports (checks run in parallel, so not necessarily the last one)."""
        for message in self.errors:
            if message in tf_message:
                return message
        return self.errors[0] if self.errors else None

    def skip(self, episode: str, kind: str, message: str):
        with self._lock:
            if episode in self.skipped_ids:
                return  # seen again in a later epoch: already counted
            self.skipped_ids.append(episode)
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
        log.warning("skipping bad episode: %s", message)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped_ids)


def load_builder(spec: DatasetSpec):
    try:
        return tfds.builder(spec.name, data_dir=spec.data_dir)
    except Exception as e:  # tfds raises several types (DatasetNotFoundError, ValueError...)
        raise ValueError(f"datasets[{spec.name!r}]: cannot open tfds dataset {spec.name!r} in data_dir "
                         f"{spec.data_dir!r}: {e}") from e


def _leaves(feature, prefix=""):
    if isinstance(feature, tfds.features.FeaturesDict):
        for key in feature.keys():
            yield from _leaves(feature[key], f"{prefix}{key}/")
    else:
        yield prefix.rstrip("/"), feature


def _find(feature, path: str):
    for part in path.split("/"):
        if not isinstance(feature, tfds.features.FeaturesDict) or part not in feature.keys():
            return None
        feature = feature[part]
    return feature


def _np_dtype(feature) -> np.dtype:
    return np.dtype(getattr(feature, "np_dtype", None) or tf.as_dtype(feature.dtype).as_numpy_dtype)


def plan_fields(spec: DatasetSpec, builder, cfg: DataConfig) -> FieldPlan:
    """Check the mapping against the dataset's feature spec; every error names dataset and field."""
    name = spec.name
    features = builder.info.features
    if "steps" not in features.keys() or not isinstance(features["steps"], tfds.features.Dataset):
        raise ValueError(f"dataset {name!r}: not an RLDS dataset (no 'steps' sequence; top-level fields "
                         f"{sorted(features.keys())})")
    steps = features["steps"].feature
    leaves = dict(_leaves(steps))
    mapping: Mapping = spec.mapping

    def need(path, role):
        f = _find(steps, path)
        if f is None:
            raise ValueError(f"dataset {name!r}: field 'steps/{path}' (mapping.{role}) is missing in every "
                             f"episode; the steps have fields {sorted(leaves)}")
        return f

    specs = {}
    for cam, paths in mapping.cameras:
        for path in paths:
            f = need(path, f"cameras.{cam}")
            if isinstance(f, tfds.features.Image):
                if f.shape[-1] not in (3, None):
                    raise ValueError(f"dataset {name!r}: field 'steps/{path}' (camera {cam}): expected 3 colour "
                                     f"channels, got image shape {f.shape}")
                specs[path] = tf.TensorSpec([], tf.string)
            elif _np_dtype(f) == np.uint8 and len(f.shape) == 3 and f.shape[-1] == 3:
                specs[path] = tf.TensorSpec(f.shape, tf.uint8)
            elif _np_dtype(f) == np.object_ or (hasattr(f, "dtype") and tf.as_dtype(f.dtype) == tf.string):
                specs[path] = tf.TensorSpec([], tf.string)  # encoded image bytes stored as a string tensor
            else:
                raise ValueError(f"dataset {name!r}: field 'steps/{path}' (camera {cam}): expected an Image "
                                 f"or uint8 [H, W, 3], got dtype {_np_dtype(f)} shape {f.shape}")

    def vector_dims(paths, role):
        dims = []
        for path in paths:
            f = need(path, role)
            dtype = _np_dtype(f)
            shape = tuple(getattr(f, "shape", ()))
            if not np.issubdtype(dtype, np.floating):
                raise ValueError(f"dataset {name!r}: field 'steps/{path}' ({role}): expected float32/float64, "
                                 f"got dtype {dtype}")
            if len(shape) > 1:
                raise ValueError(f"dataset {name!r}: field 'steps/{path}' ({role}): expected a vector per step, "
                                 f"got shape {shape}")
            dims.append(1 if len(shape) == 0 else shape[0])
            specs[path] = tf.TensorSpec(shape, tf.as_dtype(dtype))
        return tuple(dims)

    state_dims = vector_dims(mapping.state, "state")
    action_dims = vector_dims(mapping.actions, "actions")
    for path in mapping.prompt:
        f = need(path, "prompt")
        if not (isinstance(f, tfds.features.Text) or tf.as_dtype(f.dtype) == tf.string):
            raise ValueError(f"dataset {name!r}: field 'steps/{path}' (prompt): expected text, "
                             f"got dtype {_np_dtype(f)}")
        specs[path] = tf.TensorSpec([], tf.string)

    plan = FieldPlan(
        camera_paths=dict(mapping.cameras), state_dims=state_dims, action_dims=action_dims,
        prompt_paths=mapping.prompt, specs=specs,
        has_file_path=_find(features, "episode_metadata/file_path") is not None)
    for what, dim in (("state", plan.state_dim), ("actions", plan.action_dim)):
        if dim is not None and dim > cfg.action_dim:
            raise ValueError(f"dataset {name!r}: {what} has {dim} dims, more than the model's "
                             f"data.action_dim={cfg.action_dim}")
    mask = cfg.delta_mask_for(spec)
    if mask is not None and plan.action_dim is not None and len(mask) > min(plan.action_dim, plan.state_dim or 10**9):
        raise ValueError(f"dataset {name!r}: delta_action_mask has {len(mask)} entries, more than the "
                         f"state/action dims ({plan.state_dim}/{plan.action_dim})")
    return plan


def _get(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def read_episodes(spec: DatasetSpec, cfg: DataConfig, plan: FieldPlan, builder, *, train: bool,
                  shard: tuple[int, int]) -> tf.data.Dataset:
    """Episodes as {"id", "index", "steps": {path: [T, ...]}} (only mapped fields, images encoded)."""
    index, count = shard
    split = spec.split
    if count > 1:
        split = tfds.even_splits(split, n=count)[index]
    options = tf.data.Options()
    options.deterministic = True
    read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=cfg.seed, options=options)
    try:
        ds = builder.as_dataset(split=split, decoders={"steps": tfds.decode.SkipDecoding()}, shuffle_files=train,
                                read_config=read_config)
    except Exception as e:
        raise ValueError(f"datasets[{spec.name!r}]: cannot read split {split!r}: {e}") from e
    if train:
        ds = ds.repeat()
    paths = tuple(plan.specs)
    has_file_path = plan.has_file_path

    def gather(i, episode):
        steps = {p: _get(episode["steps"], p) for p in paths}
        name = episode["tfds_id"]
        if has_file_path:
            name = tf.strings.join([episode["tfds_id"], " (", episode["episode_metadata"]["file_path"], ")"])
        return {"id": name, "index": i, "steps": steps}

    return ds.enumerate().map(gather, num_parallel_calls=cfg.num_parallel_calls)


def _vector(steps, paths, specs):
    parts = []
    for p in paths:
        x = tf.cast(steps[p], tf.float32)
        if specs[p].shape.rank == 0:
            x = x[:, None]
        parts.append(x)
    return tf.concat(parts, axis=-1)


def _choice(seed, n_or_logits):
    return tf.random.stateless_categorical(n_or_logits[None], 1, seed, dtype=tf.int32)[0, 0]


def episode_arrays(spec: DatasetSpec, cfg: DataConfig, plan: FieldPlan, episodes: tf.data.Dataset,
                   elog: EpisodeLog) -> tf.data.Dataset:
    """Per episode: chosen camera/prompt alternatives, float32 state [T, S] and actions [T, A], checked."""
    name = spec.name
    specs = plan.specs
    cams = plan.camera_paths
    skip = cfg.skip_bad_episodes
    expected = {"state": plan.state_dim, "actions": plan.action_dim}
    seen_dims: dict[str, int] = {}

    def restructure(ep):
        steps = ep["steps"]
        seed = tf.stack([tf.constant(cfg.seed, tf.int64), ep["index"]])
        seeds = tf.random.experimental.stateless_split(seed, num=len(cams) + 1)
        images = {}
        for k, (cam, paths) in enumerate(cams.items()):
            if len(paths) == 1:
                images[cam] = steps[paths[0]]
            else:  # DROID: one of the exterior cameras, at random per episode
                pick = _choice(seeds[k], tf.zeros([len(paths)]))
                images[cam] = tf.switch_case(pick, [lambda p=p: steps[p] for p in paths])
        if plan.prompt_paths:
            alts = tf.stack([steps[p] for p in plan.prompt_paths])  # [n, T]
            nonempty = tf.reduce_any(tf.strings.length(alts) > 0, axis=1)
            logits = tf.where(nonempty, 0.0, -1e9)
            pick = tf.cond(tf.reduce_any(nonempty), lambda: _choice(seeds[-1], logits), lambda: 0)
            prompt = tf.gather(alts, pick)
        else:
            prompt = tf.fill([tf.shape(steps[next(iter(specs))])[0]], "")
        if cfg.default_prompt is not None:
            prompt = tf.where(tf.strings.length(prompt) > 0, prompt, cfg.default_prompt)
        return {
            "id": ep["id"], "index": ep["index"], "images": images, "prompt": prompt,
            "state": _vector(steps, spec.mapping.state, specs),
            "actions": _vector(steps, spec.mapping.actions, specs),
        }

    def check(episode_id, state, actions):
        episode = episode_id.decode("utf-8", "replace")
        where = f"dataset {name!r}, episode {episode!r}"
        problem = None
        if state.shape[0] == 0:
            problem = ("empty", f"{where}: empty episode (0 steps)")
        for field, x, paths in (("state", state, spec.mapping.state), ("actions", actions, spec.mapping.actions)):
            if problem:
                break
            dim = x.shape[-1]
            want = expected[field] or seen_dims.setdefault(field, dim)
            if dim != want or dim > cfg.action_dim:
                problem = ("shape", f"{where}: field '{field}' {list(paths)} has {dim} dims, expected {want} "
                                    f"(and at most data.action_dim={cfg.action_dim})")
                break
            bad = np.argwhere(~np.isfinite(x))
            if bad.size:
                t, d = bad[0]
                problem = ("nan", f"{where}: field '{field}' {list(paths)} has {len(bad)} NaN/inf values "
                                  f"(first at step {t}, dim {d})")
        if problem is None:
            return True
        kind, message = problem
        if skip:
            elog.skip(episode, kind, message)
            return False
        elog.fail(message + " (set data.skip_bad_episodes=True to skip such episodes)")

    def is_good(ep):
        ok = tf.numpy_function(check, [ep["id"], ep["state"], ep["actions"]], tf.bool, stateful=True)
        return tf.ensure_shape(ok, [])

    ds = episodes.map(restructure, num_parallel_calls=cfg.num_parallel_calls)
    return ds.filter(is_good)


def action_chunks(state, actions, horizon: int, mask, mapping: Mapping):
    """[T, A] → chunks [T, H, A] of the next `horizon` actions (clamped at the last step), minus the
    masked state dims when delta actions are on; plus openpi's DROID "is moving" flag per frame."""
    steps = tf.shape(actions)[0]
    idx = tf.minimum(tf.range(steps)[:, None] + tf.range(horizon)[None, :], steps - 1)
    chunks = tf.gather(actions, idx)
    moving = None
    if mapping.idle_threshold is not None:
        # openpi looks at the first half of the chunk; position mode needs two steps to see motion.
        n = min(max(horizon // 2, 2 if mapping.idle_mode == "position" else 1), horizon)
        half = chunks[:, :n]
        moved = half - half[:, :1] if mapping.idle_mode == "position" else half
        moving = tf.reduce_any(tf.abs(moved) > mapping.idle_threshold, axis=[1, 2])
        if n < 2 and mapping.idle_mode == "position":
            moving = tf.ones_like(moving)  # a 1-step chunk cannot show motion: keep every frame
    if mask is not None:
        d = len(mask)
        offset = tf.where(tf.constant(mask), state[:, :d], 0.0)
        offset = tf.pad(offset, [[0, 0], [0, tf.shape(chunks)[-1] - d]])
        chunks = chunks - offset[:, None, :]
    return chunks, moving


def chunk_and_normalize(spec: DatasetSpec, cfg: DataConfig, plan: FieldPlan, episodes: tf.data.Dataset,
                        stats: dict[str, _ns.NormStats] | None) -> tf.data.Dataset:
    """Episodes → frames: action chunks (clamped), delta actions, normalisation, padding to model dims."""
    horizon = cfg.horizon
    mapping = spec.mapping
    mask = cfg.delta_mask_for(spec)
    source = cfg.norm_stats_for(spec)
    state_stats = action_stats = None
    if stats is not None:
        state_stats = _ns.require(stats, "state", cfg.quantile_norm, source)
        action_stats = _ns.require(stats, "actions", cfg.quantile_norm, source)
        for what, s, dim in (("state", state_stats, plan.state_dim), ("actions", action_stats, plan.action_dim)):
            if dim is not None and dim > s.dim:
                raise ValueError(f"dataset {spec.name!r}: norm stats {source!r} have {s.dim} dims for '{what}' "
                                 f"but the data has {dim}; recompute them with shallow_pi_jax.compute_norm_stats")

    def norm(x, s):
        if s is None:
            return x
        dim = tf.shape(x)[-1]
        x64 = tf.cast(x, tf.float64)
        if cfg.quantile_norm:
            q01, q99 = tf.constant(s.q01)[:dim], tf.constant(s.q99)[:dim]
            y = (x64 - q01) / (q99 - q01 + _ns.EPS) * 2.0 - 1.0
        else:
            mean, std = tf.constant(s.mean)[:dim], tf.constant(s.std)[:dim]
            y = (x64 - mean) / (std + _ns.EPS)
        return tf.cast(y, tf.float32)

    def pad(x):
        extra = cfg.action_dim - tf.shape(x)[-1]
        paddings = tf.concat([tf.zeros([tf.rank(x) - 1, 2], tf.int32), [[0, extra]]], axis=0)
        return tf.pad(x, paddings)

    def frames(ep):
        state = ep["state"]
        steps = tf.shape(state)[0]
        chunks, moving = action_chunks(state, ep["actions"], horizon, mask, mapping)
        out = {"images": ep["images"], "prompt": ep["prompt"]}
        if moving is not None:
            out["moving"] = moving
        out["state"] = pad(norm(state, state_stats))
        out["actions"] = pad(norm(chunks, action_stats))
        out["state"] = tf.ensure_shape(out["state"], [None, cfg.action_dim])
        out["actions"] = tf.ensure_shape(out["actions"], [None, horizon, cfg.action_dim])
        out["state_dim"] = tf.fill([steps], tf.shape(state)[-1])
        return tf.data.Dataset.from_tensor_slices(out)

    ds = episodes.flat_map(frames)
    if mapping.idle_threshold is not None:
        ds = ds.filter(lambda f: f["moving"])
        ds = ds.map(lambda f: {k: v for k, v in f.items() if k != "moving"})
    return ds


def raw_chunks(spec: DatasetSpec, cfg: DataConfig, elog: EpisodeLog, shard=(0, 1)) -> tf.data.Dataset:
    """One pass over a dataset's episodes, without images: {"state": [T, S], "actions": [T, H, A]}
    after delta actions, before normalisation (what norm stats are computed on)."""
    builder = load_builder(spec)
    plan = plan_fields(spec, builder, cfg)
    # No images needed: drop the cameras from what is gathered per episode.
    lean = dataclasses.replace(plan, camera_paths={}, specs={p: s for p, s in plan.specs.items()
                                                             if p not in sum(plan.camera_paths.values(), ())})
    lean_spec = dataclasses.replace(spec, mapping=dataclasses.replace(spec.mapping, cameras=()))
    episodes = read_episodes(lean_spec, cfg, lean, builder, train=False, shard=shard)
    episodes = episode_arrays(lean_spec, cfg, lean, episodes, elog)
    horizon, mask = cfg.horizon, cfg.delta_mask_for(spec)

    def chunk(ep):
        state = ep["state"]
        chunks, moving = action_chunks(state, ep["actions"], horizon, mask, spec.mapping)
        if moving is not None:  # stats over the frames training sees
            state, chunks = tf.boolean_mask(state, moving), tf.boolean_mask(chunks, moving)
        return {"state": state, "actions": chunks}

    return episodes.map(chunk, num_parallel_calls=cfg.num_parallel_calls)
