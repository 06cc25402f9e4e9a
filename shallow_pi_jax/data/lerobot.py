"""LeRobot datasets (v2.0 / v2.1 layout) → the same per-episode arrays as rlds.py, as tf.data.

Layout read (LeRobot's, as openpi's physical-intelligence/libero is published):

    <root>/meta/info.json        codebase_version, fps, chunks_size, splits {"train": "0:N"},
                                 data_path / video_path templates, features {key: {dtype, shape, names}}
    <root>/meta/episodes.jsonl   {"episode_index": i, "tasks": [...], "length": T} per line
    <root>/meta/tasks.jsonl      {"task_index": k, "task": "..."} per line
    <root>/data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet   one row per frame
    <root>/videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4

The root is `data_dir/<name>` (data_dir holds repo ids, like LeRobot's HF_LEROBOT_HOME), or
`data_dir` itself when it holds meta/info.json; data_dir None is LeRobot's own cache
($HF_LEROBOT_HOME, else $HF_HOME/lerobot, else ~/.cache/huggingface/lerobot). Nothing is downloaded.

A mapping names features by their info.json key; the prompt "task" is the frame's task_index looked
up in tasks.jsonl (openpi's prompt_from_task). Images of dtype "image" stay the PNG bytes of the
parquet struct {bytes, path} and are decoded after the shuffle buffer like RLDS images; dtype
"video" is decoded here with PyAV, one frame per row picked by its `timestamp` (LeRobot's 1e-4 s
tolerance), so the shuffle buffer holds those frames raw (H·W·3 bytes per camera and frame).

From here on the stream is chunking.py's (chunk_and_normalize) and pipeline.py's (shuffle, decode,
resize, mixture, augmentation, tokenisation). Mapping problems (a feature missing from info.json,
wrong dtype or shape) raise before reading, naming meta/info.json. Problems of one episode name its
parquet (or mp4) file and episode index: a missing column, a row of the wrong length, a PNG whose
chunks fail their CRC or whose size differs from info.json, an mp4 that does not decode or lacks
frames, an empty episode, NaN/inf; with data.skip_bad_episodes they are counted and skipped.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import posixpath
import struct
import zlib

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import tensorflow as tf
from PIL import Image

from shallow_pi_jax import fileio
from shallow_pi_jax.data import chunking, field_plan
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.data.episode_log import EpisodeLog
from shallow_pi_jax.data.field_plan import FieldPlan

SUPPORTED_VERSIONS = ("v2.0", "v2.1")
TASK = "task"                # the mapping's prompt path that means tasks.jsonl[task_index]
TIMESTAMP_TOLERANCE_S = 1e-4  # LeRobot's default tolerance between a row's timestamp and its video frame
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FLOAT_DTYPES = ("float16", "float32", "float64")


class BadEpisode(Exception):
    """One episode cannot be used: kind is the skip reason (shape, corrupt, empty, nan)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class Meta:
    """What meta/ says about the dataset."""
    root: str
    info: dict
    episodes: dict[int, int]   # episode_index → length
    tasks: dict[int, str]      # task_index → task

    @property
    def features(self) -> dict:
        return self.info["features"]

    def data_file(self, episode: int) -> str:
        chunk = episode // int(self.info["chunks_size"])
        return posixpath.join(self.root, self.info["data_path"].format(episode_chunk=chunk, episode_index=episode))

    def video_file(self, key: str, episode: int) -> str:
        chunk = episode // int(self.info["chunks_size"])
        rel = self.info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=episode)
        return posixpath.join(self.root, rel)


@dataclasses.dataclass(frozen=True)
class Plan:
    """FieldPlan (what chunk_and_normalize and the pipeline use) plus how each camera is stored."""
    fields: FieldPlan
    camera_kinds: dict[str, tuple[str, int, int]]   # feature → ("image" | "video", height, width)


def default_home() -> str:
    """LeRobot's local dataset cache, where it keeps <repo id>/ folders."""
    if os.environ.get("HF_LEROBOT_HOME"):
        return os.environ["HF_LEROBOT_HOME"]
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(hf_home, "lerobot")


def dataset_root(spec: DatasetSpec) -> str:
    base = spec.data_dir or default_home()
    candidates = (posixpath.join(base, spec.name), base)
    for root in candidates:
        if fileio.source(posixpath.join(root, "meta", "info.json")).exists():
            return root
    raise FileNotFoundError(
        f"datasets[{spec.name!r}]: no LeRobot dataset: neither {candidates[0]}/meta/info.json nor "
        f"{candidates[1]}/meta/info.json exists (data_dir {spec.data_dir!r} must hold <repo id>/meta/info.json "
        "or be the dataset root)")


def _read_jsonl(path: str, keys: tuple[str, ...]) -> list[dict]:
    if not fileio.source(path).exists():
        raise FileNotFoundError(f"{path}: not found (a LeRobot v2.x dataset has it)")
    out = []
    for n, line in enumerate(fileio.source(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {n}: not valid JSON ({e})") from None
        missing = [k for k in keys if not isinstance(item, dict) or k not in item]
        if missing:
            raise ValueError(f"{path}, line {n}: expected keys {list(keys)}, missing {missing}")
        out.append(item)
    return out


def load_meta(spec: DatasetSpec) -> Meta:
    root = dataset_root(spec)
    info_path = posixpath.join(root, "meta", "info.json")
    info = fileio.read_json(fileio.source(info_path))
    if not isinstance(info, dict):
        raise ValueError(f"{info_path}: expected a JSON object, got {type(info).__name__}")
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{info_path}: codebase_version {version!r} is not supported (expected one of "
                         f"{SUPPORTED_VERSIONS}: per-episode parquet files and meta/episodes.jsonl)")
    for key, kind in (("features", dict), ("data_path", str), ("chunks_size", int), ("fps", (int, float)),
                      ("splits", dict)):
        if not isinstance(info.get(key), kind):
            raise ValueError(f"{info_path}: field {key!r}: expected {getattr(kind, '__name__', 'a number')}, "
                             f"got {info.get(key)!r}")
    episodes = {int(e["episode_index"]): int(e["length"])
                for e in _read_jsonl(posixpath.join(root, "meta", "episodes.jsonl"), ("episode_index", "length"))}
    tasks_path = posixpath.join(root, "meta", "tasks.jsonl")
    tasks = {}
    if fileio.source(tasks_path).exists():
        tasks = {int(t["task_index"]): str(t["task"]) for t in _read_jsonl(tasks_path, ("task_index", "task"))}
    return Meta(root=root, info=info, episodes=episodes, tasks=tasks)


def _image_hw(key: str, feature: dict, info_path: str, role: str) -> tuple[int, int]:
    shape, names = list(feature.get("shape") or []), list(feature.get("names") or [])
    if len(shape) != 3:
        raise ValueError(f"{info_path}: feature {key!r} ({role}): expected an image shape [height, width, 3], "
                         f"got {shape}")
    if len(names) == 3 and "height" in names and "width" in names:
        h, w = shape[names.index("height")], shape[names.index("width")]
        c = shape[3 - names.index("height") - names.index("width")]
    elif shape[-1] == 3:
        (h, w, c) = shape
    else:  # channel-first, as some v2.0 video features are written
        (c, h, w) = shape
    if c != 3:
        raise ValueError(f"{info_path}: feature {key!r} ({role}): expected 3 colour channels, got shape {shape} "
                         f"(names {names})")
    return int(h), int(w)


def plan_fields(spec: DatasetSpec, meta: Meta, cfg: DataConfig) -> Plan:
    """Check the mapping against meta/info.json; every error names the file and the feature."""
    info_path = posixpath.join(meta.root, "meta", "info.json")
    features = meta.features

    def need(key, role):
        if key not in features:
            hint = ""
            if "/" in key:
                hint = (" (a LeRobot mapping names info.json features, e.g. mapping 'lerobot_libero' for openpi's "
                        "LIBERO conversion, not RLDS step paths)")
            raise ValueError(f"dataset {spec.name!r}: feature {key!r} (mapping.{role}) is not in {info_path}; its "
                             f"features are {sorted(features)}{hint}")
        return features[key]

    kinds = {}

    def camera(key, cam):
        f = need(key, f"cameras.{cam}")
        if f.get("dtype") not in ("image", "video"):
            raise ValueError(f"{info_path}: feature {key!r} (camera {cam}): expected dtype 'image' or 'video', "
                             f"got {f.get('dtype')!r}")
        if f["dtype"] == "video" and not meta.info.get("video_path"):
            raise ValueError(f"{info_path}: feature {key!r} (camera {cam}) is a video but 'video_path' is "
                             f"{meta.info.get('video_path')!r}")
        h, w = _image_hw(key, f, info_path, f"camera {cam}")
        kinds[key] = (f["dtype"], h, w)
        return tf.TensorSpec([], tf.string) if f["dtype"] == "image" else tf.TensorSpec([h, w, 3], tf.uint8)

    def vector(key, role):
        f = need(key, role)
        shape = list(f.get("shape") or [])
        if f.get("dtype") not in _FLOAT_DTYPES:
            raise ValueError(f"{info_path}: feature {key!r} ({role}): expected dtype float32/float64, "
                             f"got {f.get('dtype')!r}")
        if len(shape) != 1:
            raise ValueError(f"{info_path}: feature {key!r} ({role}): expected a vector shape [n], got {shape}")
        return tf.TensorSpec([int(shape[0])], tf.float32)

    def prompt(key):
        if key == TASK and key not in features:
            need("task_index", "prompt")
            if not meta.tasks:
                raise FileNotFoundError(f"{posixpath.join(meta.root, 'meta', 'tasks.jsonl')}: not found or empty "
                                        f"(mapping.prompt 'task' reads the task of each frame's task_index)")
        elif need(key, "prompt").get("dtype") != "string":
            raise ValueError(f"{info_path}: feature {key!r} (prompt): expected dtype 'string' (or the prompt "
                             f"'task'), got {features[key].get('dtype')!r}")

    fields = field_plan.plan_fields(spec, cfg, camera=camera, vector=vector, prompt=prompt)
    return Plan(fields=fields, camera_kinds=kinds)


def episode_ids(spec: DatasetSpec, meta: Meta, shard: tuple[int, int]) -> list[int]:
    """This process's episodes of the split: every count-th one from its index on (disjoint across processes)."""
    info_path = posixpath.join(meta.root, "meta", "info.json")
    splits = meta.info["splits"]
    if spec.split not in splits:
        raise ValueError(f"datasets[{spec.name!r}].split: {spec.split!r} is not a split of {info_path} "
                         f"(expected one of {sorted(splits)})")
    try:
        start, stop = (int(x) for x in str(splits[spec.split]).split(":"))
    except ValueError:
        raise ValueError(f"{info_path}: splits[{spec.split!r}]: expected 'start:stop', "
                         f"got {splits[spec.split]!r}") from None
    ids = sorted(e for e in meta.episodes if start <= e < stop)
    index, count = shard
    mine = ids[index::count]
    if not mine:
        raise ValueError(f"datasets[{spec.name!r}]: split {spec.split!r} has no episodes for process {index} of "
                         f"{count} ({len(ids)} episodes in meta/episodes.jsonl within {start}:{stop})")
    return mine


def png_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a PNG whose chunks are intact: every length and CRC checked, IHDR first, IEND
    present. Catches truncation and flipped bits without decoding (decoding happens after the shuffle)."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG (wrong signature)")
    pos, size, view = len(_PNG_SIGNATURE), None, memoryview(data)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ValueError(f"truncated inside chunk {kind.decode('latin-1')!r} at byte {pos}")
        if zlib.crc32(view[pos + 4:end - 4]) != struct.unpack(">I", data[end - 4:end])[0]:
            raise ValueError(f"chunk {kind.decode('latin-1')!r} at byte {pos} fails its CRC check")
        if size is None:
            if kind != b"IHDR":
                raise ValueError(f"first chunk is {kind.decode('latin-1')!r}, not IHDR")
            width, height = struct.unpack(">II", data[pos + 8:pos + 16])
            size = (height, width)
        if kind == b"IEND":
            return size
        pos = end
    raise ValueError(f"truncated: no IEND chunk in {len(data)} bytes")


def _image_size(data: bytes) -> tuple[int, int]:
    if data.startswith(_PNG_SIGNATURE):
        return png_size(data)
    try:  # another format (LeRobot writes PNG): decode it fully to know it is intact
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.height, im.width
    except Exception as e:  # PIL raises several types for bad data
        raise ValueError(f"cannot be decoded ({type(e).__name__}: {e})") from None


def _source(path: str):
    """What pyarrow and PyAV open: a local path as is (they seek and read only what they need); a remote
    file (gs://...) read whole through fileio (one episode's file, a few MB), since neither library can
    use every backend's file objects."""
    if not fileio.is_remote(path):
        return str(fileio.source(path))
    return io.BytesIO(fileio.source(path).read_bytes())


def _vectors(table: pa.Table, key: str, dim: int, where: str) -> np.ndarray:
    col = table.column(key).combine_chunks()
    if col.null_count:
        raise BadEpisode("shape", f"{where}: column {key!r} has {col.null_count} null rows")
    kind = col.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if (lengths != dim).any():
            row = int(np.argmax(lengths != dim))
            raise BadEpisode("shape", f"{where}: column {key!r} has {lengths[row]} values in row {row}, expected "
                                      f"{dim} (meta/info.json shape [{dim}])")
        values = pc.list_flatten(col)
    elif dim == 1:
        values = col
    else:
        raise BadEpisode("shape", f"{where}: column {key!r}: expected a list of {dim} floats per row, got arrow "
                                  f"type {kind}")
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise BadEpisode("shape", f"{where}: column {key!r}: expected floats, got arrow type {kind}")
    return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), dim)


def _images(table: pa.Table, key: str, hw: tuple[int, int], where: str) -> np.ndarray:
    col = table.column(key).combine_chunks()
    if pa.types.is_struct(col.type) and col.type.get_field_index("bytes") >= 0:
        col = col.field("bytes")  # HF datasets' Image: struct {bytes, path}
    if not (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        raise BadEpisode("shape", f"{where}: column {key!r}: expected images as struct {{bytes, path}} (dtype "
                                  f"'image'), got arrow type {col.type}")
    out = np.empty(len(col), object)
    for row, data in enumerate(col.to_pylist()):
        if data is None:
            raise BadEpisode("shape", f"{where}: column {key!r}, row {row}: no image bytes")
        try:
            size = _image_size(data)
        except ValueError as e:
            raise BadEpisode("corrupt", f"{where}: column {key!r}, row {row}: corrupt image: {e}") from None
        if size != hw:
            raise BadEpisode("shape", f"{where}: column {key!r}, row {row}: image is {size[0]}×{size[1]}, "
                                      f"expected {hw[0]}×{hw[1]} (meta/info.json)")
        out[row] = data
    return out


def _video(path: str, key: str, hw: tuple[int, int], timestamps: np.ndarray, where: str) -> np.ndarray:
    """uint8 [T, H, W, 3]: for each row's timestamp, the decoded frame at that time."""
    where = f"{where}, video {path!r}"
    if not fileio.source(path).exists():
        raise BadEpisode("corrupt", f"{where}: file not found")
    times, frames = [], []
    try:
        with av.open(_source(path)) as container:
            if not container.streams.video:
                raise BadEpisode("corrupt", f"{where}: no video stream")
            for frame in container.decode(container.streams.video[0]):
                if frame.time is None:
                    raise BadEpisode("corrupt", f"{where}: frame {len(frames)} has no timestamp")
                times.append(frame.time)
                frames.append(frame.to_ndarray(format="rgb24"))
    except (av.FFmpegError, OSError) as e:
        raise BadEpisode("corrupt", f"{where}: cannot be decoded ({e})") from None
    if not frames:
        raise BadEpisode("corrupt", f"{where}: no frames decoded")
    if frames[0].shape[:2] != hw:
        raise BadEpisode("shape", f"{where}: frames are {frames[0].shape[0]}×{frames[0].shape[1]}, expected "
                                  f"{hw[0]}×{hw[1]} (meta/info.json)")
    times = np.asarray(times, np.float64)
    order = np.argsort(times, kind="stable")
    times = times[order]
    hi = np.clip(np.searchsorted(times, timestamps), 0, len(times) - 1)
    lo = np.clip(hi - 1, 0, len(times) - 1)
    pick = np.where(np.abs(times[lo] - timestamps) <= np.abs(times[hi] - timestamps), lo, hi)
    miss = np.abs(times[pick] - timestamps) > TIMESTAMP_TOLERANCE_S
    if miss.any():
        row = int(np.argmax(miss))
        raise BadEpisode("corrupt", f"{where}: no frame at timestamp {timestamps[row]:.4f} s (row {row}; nearest "
                                    f"{times[pick[row]]:.4f} s, {len(times)} frames decoded from "
                                    f"{times[0]:.4f} to {times[-1]:.4f} s)")
    return np.stack([frames[i] for i in order[pick]])


def read_episode(spec: DatasetSpec, cfg: DataConfig, meta: Meta, plan: Plan, episode: int, seed) -> dict:
    """One episode's mapped fields as numpy: images per camera, prompt [T], state [T, S], actions [T, A].
    Raises BadEpisode naming the file and the episode."""
    path = meta.data_file(episode)
    where = f"dataset {spec.name!r}, episode {episode} (file {path!r})"
    mapping = spec.mapping
    rng = np.random.default_rng(seed)
    # One alternative per camera (DROID-style lists), chosen per episode.
    cameras = {cam: paths[int(rng.integers(len(paths)))] for cam, paths in plan.fields.camera_paths.items()}
    wanted = [k for k in cameras.values() if plan.camera_kinds[k][0] == "image"]
    wanted += list(mapping.state) + list(mapping.actions)
    prompts = [p for p in mapping.prompt if p != TASK or p in meta.features]
    wanted += prompts + (["task_index"] if TASK in mapping.prompt and TASK not in meta.features else [])
    if any(plan.camera_kinds[k][0] == "video" for k in cameras.values()):
        wanted.append("timestamp")
    wanted = list(dict.fromkeys(wanted))
    if not fileio.source(path).exists():
        raise BadEpisode("corrupt", f"{where}: file not found")
    try:
        parquet = pq.ParquetFile(_source(path))
        missing = [k for k in wanted if k not in parquet.schema_arrow.names]
        if missing:
            raise BadEpisode("shape", f"{where}: missing column(s) {missing}; the file has "
                                      f"{parquet.schema_arrow.names}")
        table = parquet.read(columns=wanted)
    except (pa.ArrowException, OSError) as e:
        raise BadEpisode("corrupt", f"{where}: not a readable parquet file ({e})") from None
    steps = table.num_rows
    if steps == 0:
        raise BadEpisode("empty", f"{where}: empty episode (0 rows)")
    length = meta.episodes.get(episode)
    if length is not None and length != steps:
        raise BadEpisode("shape", f"{where}: {steps} rows, but meta/episodes.jsonl gives length {length}")

    out = {"images": {}}
    for cam, key in cameras.items():
        kind, h, w = plan.camera_kinds[key]
        if kind == "image":
            out["images"][cam] = _images(table, key, (h, w), where)
        else:
            stamps = _vectors(table, "timestamp", 1, where)[:, 0].astype(np.float64)
            out["images"][cam] = _video(meta.video_file(key, episode), key, (h, w), stamps, where)
    for role, keys, dims in (("state", mapping.state, plan.fields.state_dims),
                             ("actions", mapping.actions, plan.fields.action_dims)):
        x = np.concatenate([_vectors(table, k, d, where) for k, d in zip(keys, dims)], axis=-1)
        bad = np.argwhere(~np.isfinite(x))
        if bad.size:
            t, d = bad[0]
            raise BadEpisode("nan", f"{where}: field '{role}' {list(keys)} has {len(bad)} NaN/inf values (first at "
                                    f"frame {t}, dim {d})")
        out[role] = x
    alternatives = []
    for key in mapping.prompt:
        if key == TASK and key not in meta.features:
            index = table.column("task_index").to_numpy(zero_copy_only=False)
            unknown = sorted(set(index.tolist()) - set(meta.tasks))
            if unknown:
                raise BadEpisode("shape", f"{where}: task_index {unknown[:5]} not in meta/tasks.jsonl")
            alternatives.append([meta.tasks[int(i)] for i in index])
        else:
            alternatives.append(["" if s is None else s for s in table.column(key).to_pylist()])
    prompt = [""] * steps
    nonempty = [a for a in alternatives if any(a)]
    if nonempty:  # one of the non-empty instruction fields, per episode (as rlds.py)
        prompt = nonempty[int(rng.integers(len(nonempty)))]
    if cfg.default_prompt is not None:
        prompt = [p or cfg.default_prompt for p in prompt]
    out["prompt"] = np.array([p.encode("utf-8") for p in prompt], object)
    return out


def episodes(spec: DatasetSpec, cfg: DataConfig, *, train: bool, shard: tuple[int, int],
             elog: EpisodeLog) -> tuple[FieldPlan, tf.data.Dataset]:
    """(field plan, episodes) in chunking.py's input contract, as rlds.episodes: {"id", "index", "images":
    {cam: [T] encoded or [T, H, W, 3] uint8}, "prompt": [T], "state": [T, S], "actions": [T, A]}, bad
    episodes reported."""
    meta = load_meta(spec)
    plan = plan_fields(spec, meta, cfg)
    ids = episode_ids(spec, meta, shard)
    fields = plan.fields
    cams = list(fields.camera_paths)
    # A camera's alternatives share one dtype (all PNG bytes, or all decoded video frames).
    kinds = {cam: {plan.camera_kinds[p] for p in paths} for cam, paths in fields.camera_paths.items()}
    for cam, k in kinds.items():
        if len(k) > 1:
            raise ValueError(f"dataset {spec.name!r}: mapping.cameras.{cam}: alternatives differ in dtype/shape "
                             f"({sorted(k)}); they must all be images or all videos of one size")
    kinds = {cam: next(iter(k)) for cam, k in kinds.items()}
    tout = [tf.bool, tf.string, tf.float32, tf.float32] + [
        tf.string if kinds[c][0] == "image" else tf.uint8 for c in cams]
    skip = cfg.skip_bad_episodes

    def load(index, episode):
        try:
            ep = read_episode(spec, cfg, meta, plan, int(episode), [cfg.seed, int(index)])
        except BadEpisode as bad:
            label = f"episode_{int(episode):06d}"
            if skip:
                elog.skip(f"{spec.name}/{label}", bad.kind, str(bad))
            else:
                elog.fail(f"{bad} (set data.skip_bad_episodes=True to skip such episodes)")
            empty = [np.zeros((0,) if kinds[c][0] == "image" else (0, kinds[c][1], kinds[c][2], 3),
                              object if kinds[c][0] == "image" else np.uint8) for c in cams]
            return [False, np.zeros(0, object), np.zeros((0, fields.state_dim), np.float32),
                    np.zeros((0, fields.action_dim), np.float32), *empty]
        return [True, ep["prompt"], ep["state"], ep["actions"], *(ep["images"][c] for c in cams)]

    def read(index, episode):
        ok, prompt, state, actions, *images = tf.numpy_function(load, [index, episode], tout, stateful=True)
        images = {c: tf.ensure_shape(x, [None] if kinds[c][0] == "image" else [None, kinds[c][1], kinds[c][2], 3])
                  for c, x in zip(cams, images)}
        name = tf.strings.join([f"{spec.name}/episode_", tf.strings.as_string(episode, width=6, fill="0")])
        return {"ok": tf.ensure_shape(ok, []), "id": name,
                "index": index, "images": images, "prompt": tf.ensure_shape(prompt, [None]),
                "state": tf.ensure_shape(state, [None, fields.state_dim]),
                "actions": tf.ensure_shape(actions, [None, fields.action_dim])}

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(ids, np.int64))
    if train:
        ds = ds.shuffle(len(ids), seed=cfg.seed, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate().map(read, num_parallel_calls=cfg.num_parallel_calls, deterministic=True)

    def is_ok(ep):
        return ep["ok"]

    def without_ok(ep):
        return {k: v for k, v in ep.items() if k != "ok"}

    ds = ds.filter(is_ok).map(without_ok)
    return fields, ds


def num_episodes(spec: DatasetSpec) -> int:
    meta = load_meta(spec)
    return len(episode_ids(spec, meta, (0, 1)))


def raw_chunks(spec: DatasetSpec, cfg: DataConfig, elog: EpisodeLog, shard=(0, 1)) -> tf.data.Dataset:
    """rlds.raw_chunks for a LeRobot dataset: per episode {"state": [T, S], "actions": [T, H, A]} after delta
    actions, before normalisation, without reading images (what norm stats are computed on)."""
    lean = dataclasses.replace(spec, mapping=dataclasses.replace(spec.mapping, cameras=(), prompt=()))
    _, eps = episodes(lean, cfg, train=False, shard=shard, elog=elog)
    return chunking.unnormalized_chunks(spec, cfg, eps)
