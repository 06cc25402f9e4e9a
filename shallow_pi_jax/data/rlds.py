"""RLDS episodes (tensorflow-datasets) → per-episode arrays, as tf.data.

One dataset's episodes: read them (`tfds.builder(name, data_dir=...)`, this stream's shard of the
split, files shuffled with the seed) → keep only the mapped fields, images still encoded → check
each episode (empty, NaN/inf in state or actions) → chosen camera/prompt alternatives, float32
state and actions. From there chunking.py makes frames (action chunks, delta actions, normalise,
pad to the model's dims); images are decoded later, after the shuffle buffer (see pipeline.py).

Field problems that hold for every episode (missing feature, wrong dtype or shape) are found from
the dataset's feature spec before reading and raise a ValueError naming the dataset and field.
Problems of one record are found as it is read and name the file and episode: a truncated or
corrupt TFRecord file (TF's length/CRC checks), an episode whose fields do not have the spec's
shape or disagree on the number of steps. With data.skip_bad_episodes they are counted and skipped
(a corrupt record ends its file: TFRecord cannot resynchronise, so the records after it are lost).
"""
from __future__ import annotations

import collections
import dataclasses
import os
import struct

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from shallow_pi_jax.data import chunking, field_plan
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.data.episode_log import EpisodeLog
from shallow_pi_jax.data.field_plan import FieldPlan


def load_builder(spec: DatasetSpec):
    if spec.data_dir and "://" not in spec.data_dir and not os.path.isdir(spec.data_dir):
        raise ValueError(f"datasets[{spec.name!r}].data_dir: expected an existing directory holding "
                         f"{spec.name}/<version>/, got {spec.data_dir!r} (not found)")
    try:
        return tfds.builder(spec.name, data_dir=spec.data_dir)
    except Exception as e:  # tfds raises several types (DatasetNotFoundError, ValueError...), over many lines
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"datasets[{spec.name!r}]: cannot open tfds dataset {spec.name!r} in data_dir "
                         f"{spec.data_dir!r}: {first}") from e


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

    def need(path, role):
        f = _find(steps, path)
        if f is None:
            raise ValueError(f"dataset {name!r}: field 'steps/{path}' (mapping.{role}) is missing in every "
                             f"episode; the steps have fields {sorted(leaves)}")
        return f

    def camera(path, cam):
        f = need(path, f"cameras.{cam}")
        if isinstance(f, tfds.features.Image):
            if f.shape[-1] not in (3, None):
                raise ValueError(f"dataset {name!r}: field 'steps/{path}' (camera {cam}): expected 3 colour "
                                 f"channels, got image shape {f.shape}")
            return tf.TensorSpec([], tf.string)
        if _np_dtype(f) == np.uint8 and len(f.shape) == 3 and f.shape[-1] == 3:
            return tf.TensorSpec(f.shape, tf.uint8)
        if _np_dtype(f) == np.object_ or (hasattr(f, "dtype") and tf.as_dtype(f.dtype) == tf.string):
            return tf.TensorSpec([], tf.string)  # encoded image bytes stored as a string tensor
        raise ValueError(f"dataset {name!r}: field 'steps/{path}' (camera {cam}): expected an Image "
                         f"or uint8 [H, W, 3], got dtype {_np_dtype(f)} shape {f.shape}")

    def vector(path, role):
        f = need(path, role)
        dtype = _np_dtype(f)
        shape = tuple(getattr(f, "shape", ()))
        if not np.issubdtype(dtype, np.floating):
            raise ValueError(f"dataset {name!r}: field 'steps/{path}' ({role}): expected float32/float64, "
                             f"got dtype {dtype}")
        if len(shape) > 1:
            raise ValueError(f"dataset {name!r}: field 'steps/{path}' ({role}): expected a vector per step, "
                             f"got shape {shape}")
        # A bytes/zlib tensor is not decoded by the step-level SkipDecoding this reader relies on.
        encoding = getattr(getattr(f, "_encoding", None), "value", "none")
        if encoding != "none":
            raise ValueError(f"dataset {name!r}: field 'steps/{path}' ({role}): expected a plain float tensor "
                             f"per step (tfds encoding 'none'), got encoding {encoding!r}")
        return tf.TensorSpec(shape, tf.as_dtype(dtype))

    def prompt(path):
        f = need(path, "prompt")
        if not (isinstance(f, tfds.features.Text) or tf.as_dtype(f.dtype) == tf.string):
            raise ValueError(f"dataset {name!r}: field 'steps/{path}' (prompt): expected text, "
                             f"got dtype {_np_dtype(f)}")

    return field_plan.plan_fields(spec, cfg, camera=camera, vector=vector, prompt=prompt,
                                  has_file_path=_find(features, "episode_metadata/file_path") is not None)


def _get(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def read_episodes(spec: DatasetSpec, cfg: DataConfig, plan: FieldPlan, builder, *, train: bool,
                  shard: tuple[int, int]) -> tf.data.Dataset:
    """Episodes as {"id", "index", "steps": {path: [T, ...]}} (only mapped fields, images encoded), plus
    what `episode_arrays` needs to report records that never came out (see `_read_file`): one end
    marker per file, which episode_arrays drops."""
    index, count = shard
    split = spec.split
    if count > 1:
        split = tfds.even_splits(split, n=count)[index]
    try:
        instructions = builder.info.splits[split].file_instructions
    except Exception as e:
        raise ValueError(f"datasets[{spec.name!r}]: cannot read split {split!r}: {e}") from e
    instructions = [fi for fi in instructions if fi.take != 0]
    if not instructions:
        raise ValueError(f"datasets[{spec.name!r}]: split {split!r} has no episodes for data shard {index} of {count} "
                         "(training: one shard per data stream; evaluation: one per process)")
    # tfds's own reader stops the whole pipeline at a bad record without naming the file, so the files
    # are read here, one TFRecordDataset each, as tfds does (same interleave, same ids).
    files = tf.data.Dataset.from_tensor_slices({
        "path": [os.fspath(fi.filename) for fi in instructions],
        "prefix": [os.path.basename(os.fspath(fi.filename)) for fi in instructions],
        "skip": np.array([fi.skip for fi in instructions], np.int64),
        "take": np.array([fi.take if fi.take >= 0 else fi.examples_in_shard - fi.skip for fi in instructions],
                         np.int64)})
    if train:
        files = files.shuffle(len(instructions), seed=cfg.seed, reshuffle_each_iteration=True)
    features = builder.info.features
    paths = tuple(plan.specs)
    has_file_path = plan.has_file_path

    def parse(record_index, record):
        episode = features.deserialize_example(record, decoders={"steps": tfds.decode.SkipDecoding()})
        meta = episode["episode_metadata"]["file_path"] if has_file_path else tf.constant("")
        return {"record": record_index, "file_path": meta, "steps": {p: _get(episode["steps"], p) for p in paths}}

    def read_file(f):
        return _read_file(f, parse)

    ds = files.interleave(read_file, cycle_length=16, block_length=16, num_parallel_calls=cfg.num_parallel_calls,
                          deterministic=True)
    if train:
        ds = ds.repeat()

    def gather(i, ep):
        name = tf.strings.join([ep["prefix"], "__", tf.strings.as_string(ep["record"])])
        if has_file_path:
            name = tf.strings.join([name, " (", ep["file_path"], ")"])
        return {**ep, "id": name, "index": i}

    options = tf.data.Options()
    options.deterministic = True
    return ds.enumerate().map(gather, num_parallel_calls=cfg.num_parallel_calls).with_options(options)


def _read_file(f, parse) -> tf.data.Dataset:
    """Records [skip, skip + take) of one file, parsed, each with `lost_from`: the index after the
    previous record that came out. A gap (lost_from < record) means records were lost: TF's reader
    ends the file at a truncated or corrupt record, and a record that does not parse is dropped.
    A last element with record = skip + take (an empty end marker) exposes a gap at the end."""
    records = tf.data.TFRecordDataset(f["path"]).skip(f["skip"]).take(f["take"]).ignore_errors()
    parsed = tf.data.Dataset.zip((tf.data.Dataset.counter(f["skip"]), records)).map(parse).ignore_errors()
    marker = tf.nest.map_structure(lambda s: tf.zeros([0 if d is None else d for d in s.shape], s.dtype),
                                   parsed.element_spec)
    marker["record"] = f["skip"] + f["take"]
    ds = parsed.concatenate(tf.data.Dataset.from_tensors(marker))

    def mark(expected, ep):
        return ep["record"] + 1, {**ep, "lost_from": expected, "end": f["skip"] + f["take"], "path": f["path"],
                                  "prefix": f["prefix"]}

    return ds.scan(f["skip"], mark)


def _tfrecord_frames(path: str, start: int):
    """(record index, byte offset, payload or None, file size) per record of a TFRecord file from record
    `start` on, from its length fields alone; None where the file ends inside the record. No CRC check
    (see _first_unreadable)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        size = f.size()
        offset, i = 0, 0
        while offset < size:
            f.seek(offset)
            head = f.read(12)
            n = struct.unpack("<Q", head[:8])[0] if len(head) == 12 else size
            if offset + 16 + n > size:
                yield i, offset, None, size
                return
            if i >= start:
                yield i, offset, f.read(n), size
            offset, i = offset + 16 + n, i + 1


def _first_unreadable(path: str, start: int) -> int | None:
    """Index of the first record from `start` on that TF's own reader refuses (a length or data CRC
    mismatch, or the file ending inside it); None when it reads them all. A record whose data has a
    flipped bit may still decode as a tf.train.Example, so only the CRC tells corruption from a bad field."""
    i = start
    try:
        for _ in tf.data.TFRecordDataset(path).skip(start):
            i += 1
    except tf.errors.DataLossError:
        return i
    return None


def _field_problem(payload: bytes, spec: DatasetSpec, plan: FieldPlan) -> tuple[str, str] | None:
    """(episode_metadata/file_path, what is wrong) when the record's mapped fields do not have the feature
    spec's shape; None when they do, or when the bytes are not a tf.train.Example at all (corrupt)."""
    try:
        example = tf.train.Example.FromString(payload)
    except Exception:  # protobuf's DecodeError
        return None
    feats = example.features.feature

    def values(key):
        if key not in feats:
            return []
        kind = feats[key].WhichOneof("kind")
        return list(getattr(feats[key], kind).value) if kind else []

    file_path = b"".join(values("episode_metadata/file_path")[:1]).decode("utf-8", "replace")
    roles = spec.mapping.all_paths()
    # Steps: one encoded image / instruction per step (or the RLDS is_first flag).
    counts = [len(values(f"steps/{p}")) for p, s in plan.specs.items() if s.dtype == tf.string]
    counts = counts or [len(values("steps/is_first"))]
    steps = collections.Counter(counts).most_common(1)[0][0]
    for p, s in plan.specs.items():
        if s.dtype == tf.string:
            n = len(values(f"steps/{p}"))
            if n != steps:
                return file_path, (f"field 'steps/{p}' ({roles.get(p, p)}) has {n} entries, expected one per "
                                   f"step: {steps}")
            continue
        per_step = int(np.prod(s.shape.as_list()))
        n = len(values(f"steps/{p}"))
        if n != steps * per_step:
            got = f"; that is {n // steps} per step" if steps and n % steps == 0 else ""
            return file_path, (f"field 'steps/{p}' ({roles.get(p, p)}) has {n} values over {steps} steps, "
                               f"expected {steps} × {per_step} = {steps * per_step} (per-step shape "
                               f"{tuple(s.shape.as_list())}){got}")
    return None


def explain_lost(spec: DatasetSpec, plan: FieldPlan, path: str, prefix: str, start: int, stop: int,
                 at_end: bool) -> list[tuple[str, str, str]]:
    """(episode id, kind, message) for each record in [start, stop) of `path` that TF did not deliver.

    `at_end`: the gap ran to the end of the file's share, so TF's reader may have stopped there."""
    out = []
    where = f"dataset {spec.name!r}: file {path!r}"
    ids = [f"{prefix}__{j}" for j in range(start, stop)]
    unreadable = _first_unreadable(path, start) if at_end else None
    for i, offset, payload, size in _tfrecord_frames(path, start):
        if i >= stop:
            break
        rest = f"records {i}..{stop - 1} of this file cannot be read" if stop - i > 1 else "it cannot be read"
        if payload is None:
            message = (f"{where} is truncated: it ends ({size} bytes) inside record {i} (episode {ids[i - start]!r},"
                       f" from byte {offset}); {rest}")
            return out + [(e, "corrupt", message) for e in ids[i - start:]]
        problem = None if i == unreadable else _field_problem(payload, spec, plan)
        if problem is not None:
            file_path, text = problem
            label = f"{ids[i - start]} ({file_path})" if file_path else ids[i - start]
            out.append((ids[i - start], "shape", f"dataset {spec.name!r}, episode {label!r} (file {path!r}, "
                                                 f"record {i}): {text}"))
            continue
        if i == unreadable:  # intact framing, yet TF's reader refuses it: a length or data CRC mismatch
            message = (f"{where} is corrupt at record {i} (episode {ids[i - start]!r}, byte {offset}): it fails "
                       f"TFRecord's CRC check; {rest}")
            return out + [(e, "corrupt", message) for e in ids[i - start:]]
        out.append((ids[i - start], "corrupt", f"{where}: record {i} (episode {ids[i - start]!r}) could not be "
                                               f"decoded with the dataset's feature spec"))
    if start + len(out) < stop:  # the file ended cleanly before the records dataset_info.json lists
        first = start + len(out)
        message = (f"{where} holds fewer records than its dataset_info.json lists: record {first} "
                   f"(episode {ids[first - start]!r}) is missing (the file was cut at a record boundary?)")
        out += [(e, "corrupt", message) for e in ids[first - start:]]
    return out


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
    paths = tuple(specs)
    roles = spec.mapping.all_paths()
    explained: dict[tuple, list] = {}  # a corrupt file is met again every epoch: explain it once

    def report(episode, kind, message):
        if skip:
            elog.skip(episode, kind, message)
        else:
            elog.fail(message + " (set data.skip_bad_episodes=True to skip such episodes)")

    def record_ok(path, prefix, lost_from, record, end, episode_id, lengths):
        """Reports the records lost before this one (see _read_file); False for the end marker and for an
        episode whose fields disagree on the number of steps (checked before they are concatenated)."""
        if lost_from < record:
            key = (path, lost_from, record)
            if key not in explained:
                explained[key] = explain_lost(spec, plan, path.decode(), prefix.decode(), int(lost_from),
                                              int(record), at_end=record == end)
            for episode, kind, message in explained[key]:
                report(episode, kind, message)
        if record == end:
            return False
        if len(set(lengths.tolist())) > 1:
            steps = collections.Counter(lengths.tolist()).most_common(1)[0][0]
            odd = next(k for k, n in enumerate(lengths) if n != steps)
            report(episode_id.decode("utf-8", "replace"), "shape",
                   f"dataset {name!r}, episode {episode_id.decode('utf-8', 'replace')!r}: field "
                   f"'steps/{paths[odd]}' ({roles.get(paths[odd], paths[odd])}) has {lengths[odd]} steps, expected "
                   f"{steps} like the episode's other fields")
            return False
        return True

    def is_read(ep):
        lengths = tf.stack([tf.shape(ep["steps"][p], out_type=tf.int64)[0] for p in paths])
        ok = tf.numpy_function(record_ok, [ep["path"], ep["prefix"], ep["lost_from"], ep["record"], ep["end"],
                                           ep["id"], lengths], tf.bool, stateful=True)
        return tf.ensure_shape(ok, [])

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
        report(episode, *problem)
        return False

    def is_good(ep):
        ok = tf.numpy_function(check, [ep["id"], ep["state"], ep["actions"]], tf.bool, stateful=True)
        return tf.ensure_shape(ok, [])

    ds = episodes.filter(is_read).map(restructure, num_parallel_calls=cfg.num_parallel_calls)
    return ds.filter(is_good)


def episodes(spec: DatasetSpec, cfg: DataConfig, *, train: bool, shard: tuple[int, int],
             elog: EpisodeLog) -> tuple[FieldPlan, tf.data.Dataset]:
    """(field plan, episodes checked and restructured by episode_arrays): what chunking.py takes."""
    builder = load_builder(spec)
    plan = plan_fields(spec, builder, cfg)
    episodes = read_episodes(spec, cfg, plan, builder, train=train, shard=shard)
    return plan, episode_arrays(spec, cfg, plan, episodes, elog)


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
    return chunking.unnormalized_chunks(spec, cfg, episodes)
