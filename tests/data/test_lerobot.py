"""LeRobot-format datasets (the layout of openpi's physical-intelligence/libero) feed the RLDS pipeline.

The datasets are written here exactly as LeRobot v2.0 publishes physical-intelligence/libero: meta/info.json
(robot_type panda, fps 10, features image / wrist_image of dtype image, state [8], actions [7] and LeRobot's
timestamp, frame_index, episode_index, index, task_index), meta/episodes.jsonl, meta/tasks.jsonl,
meta/stats.json and data/chunk-000/episode_00000N.parquet with images as struct {bytes: PNG, path}; and
a video variant (v2.1, dtype video, videos/chunk-000/<key>/episode_00000N.mp4). The layout test uses
the published 256×256 images; elsewhere they are 32×32 (the shape info.json then states), to keep the
pipeline tests fast. Pixels encode (episode, frame), so every output traces back to its frame and is
checked against numpy on the raw arrays. Remote (gs://) reads use the fake_gs fixture (tests/conftest.py).
"""
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
from fractions import Fraction

import av
import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FAST_COMPILE
from PIL import Image

from shallow_pi_jax import compute_norm_stats
from shallow_pi_jax.checkpoint import openpi_params
from shallow_pi_jax.data import lerobot, synthetic
from shallow_pi_jax.data import norm_stats as ns
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.data.pipeline import make_dataset
from shallow_pi_jax.data.tokenizer import PaligemmaTokenizer
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.params import init_params
from shallow_pi_jax.training import recipes

REPO = "physical-intelligence/libero"
ROOT = pathlib.Path(__file__).parents[2]
LENGTHS = (5, 7, 4)
EPISODE_TASK = (0, 1, 0)
TASKS = synthetic.TASKS[:2]
HW = (32, 32)
BASE_BLUE, WRIST_BLUE, RLDS_BLUE = 77, 150, 10  # RLDS synthetic base images have blue 10
CAMS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


def raw_episodes(rng, lengths=LENGTHS, hw=HW):
    eps = []
    for e, n in enumerate(lengths):
        base = np.zeros((n, *hw, 3), np.uint8)
        base[..., 0] = e
        base[..., 1] = np.arange(n)[:, None, None]
        base[..., 2] = BASE_BLUE
        wrist = base.copy()
        wrist[..., 2] = WRIST_BLUE
        wrist[:, :4, :4, 0] = 255 - e  # a corner, so wrist pixels are not a copy of the base camera's
        eps.append({"image": base, "wrist_image": wrist,
                    "state": (rng.normal(size=(n, 8)) + 10 * e).astype(np.float32),
                    "actions": (rng.normal(size=(n, 7)) - 5 * e).astype(np.float32),
                    "task_index": EPISODE_TASK[e % len(EPISODE_TASK)]})
    return eps


def png(img) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_mp4(path, frames, fps):
    """Lossless RGB H.264, one frame every 1/fps s from 0 (as LeRobot encodes an episode's camera stream)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264rgb", rate=fps, options={"qp": "0"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.codec_context.time_base = Fraction(1, fps)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_lerobot(root, eps, *, video=False):
    """A LeRobot dataset at root (the dataset root, i.e. <HF_LEROBOT_HOME>/<repo id>)."""
    fps = 10
    hw = list(eps[0]["image"].shape[1:3])
    image_kind = "video" if video else "image"
    camera = {"dtype": image_kind, "shape": [*hw, 3], "names": ["height", "width", "channel"]}
    if video:
        camera["info"] = {"video.fps": float(fps), "video.height": hw[0], "video.width": hw[1],
                          "video.channels": 3, "video.codec": "h264", "video.pix_fmt": "rgb24",
                          "video.is_depth_map": False, "has_audio": False}
    scalar = lambda dtype: {"dtype": dtype, "shape": [1], "names": None}  # noqa: E731
    features = {"image": camera, "wrist_image": dict(camera),
                "state": {"dtype": "float32", "shape": [8], "names": ["state"]},
                "actions": {"dtype": "float32", "shape": [7], "names": ["actions"]},
                "timestamp": scalar("float32"), "frame_index": scalar("int64"), "episode_index": scalar("int64"),
                "index": scalar("int64"), "task_index": scalar("int64")}
    info = {"codebase_version": "v2.1" if video else "v2.0", "robot_type": "panda", "total_episodes": len(eps),
            "total_frames": sum(len(e["state"]) for e in eps), "total_tasks": len(TASKS),
            "total_videos": 2 * len(eps) if video else 0, "total_chunks": 1, "chunks_size": 1000, "fps": fps,
            "splits": {"train": f"0:{len(eps)}"},
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": ("videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
                           if video else None),
            "features": features}
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    (root / "meta" / "tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": k, "task": t}) + "\n" for k, t in enumerate(TASKS)))
    (root / "meta" / "episodes.jsonl").write_text("".join(
        json.dumps({"episode_index": i, "tasks": [TASKS[e["task_index"]]], "length": len(e["state"])}) + "\n"
        for i, e in enumerate(eps)))
    stats = {k: {"mean": np.concatenate([e[k] for e in eps]).mean(0).tolist(),
                 "std": np.concatenate([e[k] for e in eps]).std(0).tolist()} for k in ("state", "actions")}
    (root / "meta" / "stats.json").write_text(json.dumps(stats))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    first = 0
    for i, e in enumerate(eps):
        n = len(e["state"])
        columns = {}
        for key in ("image", "wrist_image"):
            if video:
                write_mp4(root / "videos" / "chunk-000" / key / f"episode_{i:06d}.mp4", e[key], fps)
            else:
                columns[key] = pa.array([{"bytes": png(img), "path": f"frame_{t:06d}.png"}
                                         for t, img in enumerate(e[key])], image_type)
        # HF datasets' Sequence(float32, length=n), as LeRobot declares a feature of shape [n].
        columns["state"] = pa.array(list(e["state"]), pa.list_(pa.float32(), 8))
        columns["actions"] = pa.array(list(e["actions"]), pa.list_(pa.float32(), 7))
        columns["timestamp"] = pa.array(np.arange(n, dtype=np.float32) / fps)
        columns["frame_index"] = pa.array(np.arange(n, dtype=np.int64))
        columns["episode_index"] = pa.array(np.full(n, i, np.int64))
        columns["index"] = pa.array(np.arange(first, first + n, dtype=np.int64))
        columns["task_index"] = pa.array(np.full(n, e["task_index"], np.int64))
        first += n
        path = root / "data" / "chunk-000" / f"episode_{i:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("lerobot")
    eps = raw_episodes(np.random.default_rng(0))
    write_lerobot(root / "png" / REPO, eps)
    write_lerobot(root / "mp4" / REPO, eps, video=True)
    rng = np.random.default_rng(1)
    synthetic.write_dataset("tiny_libero", str(root / "rlds"), synthetic.libero_features(image_hw=HW),
                            [synthetic.libero_episode(rng, n, index=i) for i, n in enumerate((6, 5))])
    tok = tokenizer
    stats = {"state": ns.compute(np.concatenate([e["state"] for e in eps])),
             "actions": ns.compute(np.concatenate([e["actions"] for e in eps]))}
    ns.save(stats, root / "stats.json")
    return dict(root=root, eps=eps, tok=tok, stats=stats)


def spec(world, variant="png", **kw):
    return DatasetSpec(REPO, str(world["root"] / variant), "lerobot_libero", format="lerobot", **kw)


def cfg(world, *specs, **kw):
    base = dict(datasets=specs or (spec(world),), batch_size=4, horizon=3, action_dim=8, image_size=HW[0],
                max_token_len=24, tokenizer_path=world["tok"], norm_stats_path=str(world["root"] / "stats.json"),
                shuffle_buffer=8, seed=1, process_index=0, process_count=1)
    base.update(kw)
    return DataConfig(**base)


def px(image):
    return np.round((image + 1.0) / 2.0 * 255.0).astype(np.int64)


def examples(it, limit=None):
    out = []
    for batch in it:
        for i in range(batch["state"].shape[0]):
            out.append({k: ({c: x[i] for c, x in v.items()} if isinstance(v, dict) else v[i])
                        for k, v in batch.items()})
        if limit is not None and len(out) >= limit:
            break
    return out


def trace(ex):
    p = px(ex["images"]["base_0_rgb"][0, 0])
    return int(p[0]), int(p[1]), int(p[2])


def check_example(world, ex, horizon, delta_mask=None):
    """An example equals its raw frame after the documented transforms (z-score, clamped chunk, padding)."""
    e, t, blue = trace(ex)
    assert blue == BASE_BLUE
    raw = world["eps"][e]
    st, at = world["stats"]["state"], world["stats"]["actions"]
    np.testing.assert_array_equal(px(ex["images"]["base_0_rgb"]), raw["image"][t])
    np.testing.assert_array_equal(px(ex["images"]["left_wrist_0_rgb"]), raw["wrist_image"][t])
    assert ex["image_masks"]["base_0_rgb"] and ex["image_masks"]["left_wrist_0_rgb"]
    assert not ex["image_masks"]["right_wrist_0_rgb"] and (ex["images"]["right_wrist_0_rgb"] == -1.0).all()
    np.testing.assert_allclose(ex["state"][:8], (raw["state"][t] - st.mean) / (st.std + 1e-6), atol=1e-5)
    chunk = raw["actions"][np.minimum(t + np.arange(horizon), len(raw["state"]) - 1)]
    if delta_mask is not None:
        chunk = chunk - np.where(delta_mask, raw["state"][t, :7], 0.0)
    np.testing.assert_allclose(ex["actions"][:, :7], (chunk - at.mean) / (at.std + 1e-6), atol=1e-4)
    assert (ex["actions"][:, 7:] == 0).all()
    return e, t


def test_the_published_libero_layout_at_256x256_reads_back(world, tmp_path):
    """openpi's LIBERO conversion at its real image size (256×256, two short episodes): every file where
    LeRobot v2.0 puts it, every column as LeRobot writes it, and each episode read back exactly."""
    eps = raw_episodes(np.random.default_rng(3), lengths=(3, 2), hw=(256, 256))
    root = tmp_path / REPO
    write_lerobot(root, eps)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "data/chunk-000/episode_000000.parquet", "data/chunk-000/episode_000001.parquet",
        "meta/episodes.jsonl", "meta/info.json", "meta/stats.json", "meta/tasks.jsonl"]
    schema = pq.read_schema(root / "data" / "chunk-000" / "episode_000000.parquet")
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF datasets' Image()
    assert {n: schema.field(n).type for n in schema.names} == {
        "image": image, "wrist_image": image, "state": pa.list_(pa.float32(), 8),
        "actions": pa.list_(pa.float32(), 7), "timestamp": pa.float32(), "frame_index": pa.int64(),
        "episode_index": pa.int64(), "index": pa.int64(), "task_index": pa.int64()}
    s = DatasetSpec(REPO, str(tmp_path), "lerobot_libero", format="lerobot")
    c = cfg(world, s, image_size=256)
    meta = lerobot.load_meta(s)
    assert (meta.info["robot_type"], meta.info["fps"], meta.episodes, meta.tasks) == ("panda", 10, {0: 3, 1: 2},
                                                                                       dict(enumerate(TASKS)))
    assert meta.data_file(1000) == f"{tmp_path}/{REPO}/data/chunk-001/episode_001000.parquet"  # chunks of 1000
    plan = lerobot.plan_fields(s, meta, c)
    assert plan.camera_kinds == {"image": ("image", 256, 256), "wrist_image": ("image", 256, 256)}
    for e, raw in enumerate(eps):
        ep = lerobot.read_episode(s, c, meta, plan, e, 0)
        for cam, key in (("base_0_rgb", "image"), ("left_wrist_0_rgb", "wrist_image")):
            decoded = np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in ep["images"][cam]])
            np.testing.assert_array_equal(decoded, raw[key])
        np.testing.assert_array_equal(ep["state"], raw["state"])
        np.testing.assert_array_equal(ep["actions"], raw["actions"])
        assert ep["prompt"].tolist() == [TASKS[EPISODE_TASK[e]].encode()] * len(raw["state"])


@pytest.mark.parametrize("variant", ["png", "mp4"])
def test_eval_pass_equals_the_raw_frames(world, variant):
    c = cfg(world, spec(world, variant))
    exs = examples(make_dataset(c, train=False))
    seen = sorted(check_example(world, ex, c.horizon) for ex in exs)
    assert seen == [(e, t) for e, n in enumerate(LENGTHS) for t in range(n)]
    tok = PaligemmaTokenizer(world["tok"], c.max_token_len)
    for ex in exs:
        want, mask = tok.tokenize_batch([TASKS[EPISODE_TASK[trace(ex)[0]]]], None)
        np.testing.assert_array_equal(ex["tokenized_prompt"], want[0])
        np.testing.assert_array_equal(ex["tokenized_prompt_mask"], mask[0])


def test_delta_actions_and_process_shards_are_disjoint(world):
    mask = (True,) * 6 + (False,)
    per_process = []
    for index in range(2):
        c = cfg(world, delta_action_mask=mask, process_index=index, process_count=2)
        per_process.append({check_example(world, ex, c.horizon, np.array(mask))[0]
                            for ex in examples(make_dataset(c, train=False))})
    assert per_process == [{0, 2}, {1}]


def test_mixes_with_rlds_by_weight(world):
    rlds_spec = DatasetSpec("tiny_libero", str(world["root"] / "rlds"), "libero", weight=1.0,
                            norm_stats=str(world["root"] / "stats.json"))
    c = cfg(world, spec(world, weight=3.0), rlds_spec, batch_size=8, augment=False)  # pixels stay traceable
    exs = examples(make_dataset(c, train=True), limit=96)
    lerobot = [ex for ex in exs if trace(ex)[2] == BASE_BLUE]
    rlds = [ex for ex in exs if trace(ex)[2] == RLDS_BLUE]
    assert len(lerobot) + len(rlds) == len(exs)
    assert 0.6 < len(lerobot) / len(exs) < 0.9  # weight 3:1 → 75 %
    for ex in lerobot:
        check_example(world, ex, c.horizon)


def test_norm_stats_equal_numpy(world, tmp_path):
    out = tmp_path / "norm_stats.json"
    compute_norm_stats.main(["--format", "lerobot", "--data-dir", str(world["root"] / "png"), "--dataset", REPO,
                             "--mapping", "lerobot_libero", "--horizon", "4", "--out", str(out), "--no-progress"])
    got = ns.load(out)
    eps = world["eps"]
    state = np.concatenate([e["state"] for e in eps]).astype(np.float64)
    chunk = lambda a: a[np.minimum(np.arange(len(a))[:, None] + np.arange(4), len(a) - 1)]  # noqa: E731
    rows = np.concatenate([chunk(e["actions"]) for e in eps]).reshape(-1, 7).astype(np.float64)
    for key, x in (("state", state), ("actions", rows)):
        np.testing.assert_allclose(got[key].mean, x.mean(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[key].std, x.std(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[key].q01, np.quantile(x, 0.01, axis=0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[key].q99, np.quantile(x, 0.99, axis=0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["png", "mp4"])
def test_a_remote_dataset_norm_stats_and_tokenizer_read_through_the_filesystem_layer(world, fake_gs, tmp_path,
                                                                                     variant):
    data = fake_gs.upload(world["root"] / variant, "gs://bucket/lerobot")
    stats = fake_gs.upload(world["root"] / "stats.json", "gs://bucket/assets/norm_stats.json")
    tok = fake_gs.upload(pathlib.Path(world["tok"]), "gs://bucket/paligemma_tokenizer.model")
    c = cfg(world, DatasetSpec(REPO, data, "lerobot_libero", format="lerobot"), norm_stats_path=stats,
            tokenizer_path=tok)
    seen = sorted(check_example(world, ex, c.horizon) for ex in examples(make_dataset(c, train=False)))
    assert seen == [(e, t) for e, n in enumerate(LENGTHS) for t in range(n)]
    read = set(fake_gs.opened)
    assert {stats, tok, f"{data}/{REPO}/meta/info.json", f"{data}/{REPO}/meta/episodes.jsonl"} <= read
    assert {f"{data}/{REPO}/data/chunk-000/episode_{i:06d}.parquet" for i in range(len(LENGTHS))} <= read
    if variant == "mp4":
        assert f"{data}/{REPO}/videos/chunk-000/wrist_image/episode_000002.mp4" in read
    # Norm stats of the remote dataset equal the local one's.
    out = {}
    for where, data_dir in (("local", world["root"] / variant), ("remote", data)):
        out[where] = tmp_path / where / "norm_stats.json"
        compute_norm_stats.main(["--format", "lerobot", "--data-dir", str(data_dir), "--dataset", REPO,
                                 "--mapping", "lerobot_libero", "--horizon", "4", "--out", str(out[where]),
                                 "--no-progress"])
    assert out["local"].read_text() == out["remote"].read_text()


def copy_of(world, tmp_path, variant="png"):
    shutil.copytree(world["root"] / variant, tmp_path / variant)
    return tmp_path / variant / REPO


def rewrite_column(root, episode, key, values, kind=None):
    path = root / "data" / "chunk-000" / f"episode_{episode:06d}.parquet"
    table = pq.read_table(path)
    column = pa.array(values, kind or table.schema.field(key).type)
    pq.write_table(table.set_column(table.schema.get_field_index(key), key, column), path)


def drop_column(root, episode, key):
    path = root / "data" / "chunk-000" / f"episode_{episode:06d}.parquet"
    pq.write_table(pq.read_table(path).drop_columns([key]), path)


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


def images_of(root, episode, key="image"):
    return pq.read_table(root / "data" / "chunk-000" / f"episode_{episode:06d}.parquet").column(key).to_pylist()


def damage(case, root):
    """Breaks episode 1 (7 frames); returns (kind, parts of the message, file named)."""
    data = "data/chunk-000/episode_000001.parquet"
    if case == "missing_column":
        drop_column(root, 1, "state")
        return "shape", ["missing column(s) ['state']"], data
    if case == "wrong_shape":
        rewrite_column(root, 1, "actions", [[0.0] * 6] * 7, pa.list_(pa.float32()))
        return "shape", ["column 'actions' has 6 values in row 0, expected 7"], data
    if case == "corrupt_png":
        rows = images_of(root, 1)
        rows[2]["bytes"] = flip_byte(rows[2]["bytes"], len(rows[2]["bytes"]) // 2)
        rewrite_column(root, 1, "image", rows)
        return "corrupt", ["column 'image', row 2: corrupt image", "fails its CRC check"], data
    if case == "truncated_png":
        rows = images_of(root, 1, "wrist_image")
        rows[0]["bytes"] = rows[0]["bytes"][:-20]
        rewrite_column(root, 1, "wrist_image", rows)
        return "corrupt", ["column 'wrist_image', row 0: corrupt image", "truncated"], data
    if case == "wrong_image_size":
        rows = images_of(root, 1)
        rows[0]["bytes"] = png(np.zeros((16, 16, 3), np.uint8))
        rewrite_column(root, 1, "image", rows)
        return "shape", ["column 'image', row 0: image is 16×16, expected 32×32"], data
    if case == "corrupt_mp4":
        mp4 = root / "videos" / "chunk-000" / "wrist_image" / "episode_000001.mp4"
        mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
        return "corrupt", ["cannot be decoded"], "videos/chunk-000/wrist_image/episode_000001.mp4"
    if case == "short_mp4":  # a valid video missing its last frames
        write_mp4(root / "videos" / "chunk-000" / "image" / "episode_000001.mp4", np.zeros((4, *HW, 3), np.uint8), 10)
        return "corrupt", ["no frame at timestamp 0.4000 s (row 4"], "videos/chunk-000/image/episode_000001.mp4"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing_column", "wrong_shape", "corrupt_png", "truncated_png", "wrong_image_size",
                                  "corrupt_mp4", "short_mp4"])
def test_a_bad_episode_names_its_file_and_episode(world, tmp_path, case):
    variant = "mp4" if "mp4" in case else "png"
    root = copy_of(world, tmp_path, variant)
    kind, parts, file = damage(case, root)
    s = DatasetSpec(REPO, str(tmp_path / variant), "lerobot_libero", format="lerobot")
    c = cfg(world, s)
    meta = lerobot.load_meta(s)
    plan = lerobot.plan_fields(s, meta, c)
    for good in (0, 2):
        assert len(lerobot.read_episode(s, c, meta, plan, good, 0)["state"]) == LENGTHS[good]
    with pytest.raises(lerobot.BadEpisode) as e:
        lerobot.read_episode(s, c, meta, plan, 1, 0)
    message = str(e.value)
    assert e.value.kind == kind
    assert message.startswith(f"dataset {REPO!r}, episode 1 (file '{root}/data/chunk-000/episode_000001.parquet')")
    assert str(root / file) in message
    for part in parts:
        assert part in message


def test_the_pipeline_raises_a_bad_episode_or_skips_and_counts_it(world, tmp_path):
    root = copy_of(world, tmp_path)
    _, parts, _ = damage("corrupt_png", root)
    c = cfg(world, DatasetSpec(REPO, str(tmp_path / "png"), "lerobot_libero", format="lerobot"))
    with pytest.raises(ValueError) as e:
        examples(make_dataset(c, train=False))
    assert f"episode 1 (file '{root}/data/chunk-000/episode_000001.parquet')" in str(e.value)
    assert all(part in str(e.value) for part in parts) and "skip_bad_episodes=True" in str(e.value)
    it = make_dataset(cfg(world, c.datasets[0], skip_bad_episodes=True), train=False)
    assert {check_example(world, ex, c.horizon)[0] for ex in examples(it)} == {0, 2}
    assert it.skipped_by_reason == {"corrupt": 1}


def test_dataset_level_errors_name_meta_info_json(world, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/physical-intelligence/libero/meta/info\.json"):
        make_dataset(cfg(world, DatasetSpec(REPO, str(tmp_path / "empty"), "lerobot_libero", format="lerobot")))
    rlds_mapping = DatasetSpec(REPO, str(world["root"] / "png"), "libero", format="lerobot")
    with pytest.raises(ValueError, match=r"feature 'observation/image' \(mapping\.cameras\.base_0_rgb\) is not in "
                                         r".*/meta/info\.json.*mapping 'lerobot_libero'"):
        make_dataset(cfg(world, rlds_mapping))
    root = copy_of(world, tmp_path)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["state"]["shape"] = [8, 2]
    (root / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"meta/info\.json: feature 'state' \(state\): expected a vector shape "
                                         r"\[n\], got \[8, 2\]"):
        make_dataset(cfg(world, DatasetSpec(REPO, str(tmp_path / "png"), "lerobot_libero", format="lerobot")))
    # The data_dir may also be the dataset root itself.
    assert len(examples(make_dataset(cfg(world, DatasetSpec(REPO, str(world["root"] / "png" / REPO),
                                                            "lerobot_libero", format="lerobot")),
                                     train=False))) == sum(LENGTHS)


@pytest.mark.slow
def test_distils_a_few_steps_on_a_lerobot_dataset(world, tmp_path):
    write_lerobot(tmp_path / "data" / REPO, raw_episodes(np.random.default_rng(2), lengths=(12, 9)))
    # experiments/l6.py's tiny smoke test shrunk to a 2-layer teacher and a 1-layer student, run by the train
    # command as a user runs it, on one device (the 8 simulated ones of this process would triple its time).
    c = recipes.distill_config(1, "size=tiny")
    c.model.llm.depth = c.model.expert.depth = 2
    teacher = tmp_path / "teacher" / "params"
    openpi_params.save_params(jax.device_get(init_params(ModelConfig.from_dict(c.model), jax.random.PRNGKey(0))),
                              teacher)
    datasets = [dict(name=REPO, data_dir=str(tmp_path / "data"), mapping="lerobot_libero", format="lerobot")]
    proc = subprocess.run(
        [sys.executable, "-m", "shallow_pi_jax.train", "--config", "experiments/l6.py:size=tiny,depth=1",
         "--workdir", str(tmp_path / "run"), "--config.model.llm.depth=2", "--config.model.expert.depth=2",
         "--config.num_steps=2", "--config.log_every=1", f"--config.teacher.params={teacher}",
         f"--config.data.datasets={datasets}", f"--config.data.tokenizer_path={world['tok']}",
         f"--config.data.norm_stats_path={world['root'] / 'stats.json'}"],
        cwd=ROOT, env={**os.environ, "XLA_FLAGS": FAST_COMPILE}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # the trainer stops with an error on a non-finite loss, so a finished run had finite ones
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["data"]["datasets"][0]
    assert recorded["format"] == "lerobot" and recorded["name"] == REPO
    assert (tmp_path / "run" / "student" / "params").is_dir()
