"""Hostile requests and broken policy files against the real server (issue #23).

Every refused request must come back as one short text frame naming the field, and the same
connection must then answer a good observation exactly as before; a frame over the size limit
closes its connection (1009) and nothing else; bad norm stats stop the server before it serves.
"""
import json
import struct
import subprocess
import sys
import time

import jax
import msgpack
import numpy as np
import pytest
import websockets.sync.client
from openpi_client import msgpack_numpy
from websockets.exceptions import ConnectionClosedError

from shallow_pi_jax.data import norm_stats
from shallow_pi_jax.serve.policy import Policy, checked_norm_stats, load_policy
from shallow_pi_jax.serve.presets import get_preset
from shallow_pi_jax.serve.server import DEFAULT_MAX_FRAME_BYTES, PolicyServer
from shallow_pi_jax.serve.testing import tiny_config, tiny_norm_stats, write_tiny_checkpoint

TIMEOUT = 20.0
IMAGE = "observation/image"
STATE = "observation/state"


def _good(size=(24, 32)):
    rng = np.random.default_rng(0)
    return {IMAGE: rng.integers(0, 256, (*size, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (*size, 3), dtype=np.uint8),
            STATE: rng.normal(size=8).astype(np.float32), "prompt": "reach the blue block"}


def _header(dtype, shape, data):
    """An array as openpi's msgpack-numpy writes it, with whatever header a hostile client likes."""
    return {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": list(shape)}


def _with(**fields):
    obs = _good()
    for key, value in fields.items():
        key = {"image": IMAGE, "state": STATE}.get(key, key)
        if value is None:
            del obs[key]
        else:
            obs[key] = value
    return obs


def _image(values):
    img = np.full((24, 32, 3), 0.5, np.float32)
    img[3, 4, :] = values
    return img


def _nested(depth):
    tree = 1.0
    for _ in range(depth):
        tree = {"x": tree}
    return tree


# (case, request, substrings the error must contain). Each request is what a client can put on the wire.
HOSTILE = [
    ("object dtype (client-chosen pointers)",
     _with(state=_header("|O", [3], struct.pack("<3Q", 0xDEADBEEF, 0x10, 0x20))), [STATE, "|O"]),
    ("object numpy scalar", _with(state={b"__npgeneric__": True, b"data": 5, b"dtype": "|O"}), [STATE, "|O"]),
    ("structured / void dtype", _with(state=_header("|V8", [3], b"\0" * 24)), [STATE, "|V8"]),
    ("structured dtype as a descr list", _with(state=_header([["a", "<f4"]], [2], b"\0" * 8)), [STATE, "dtype"]),
    ("unicode array", _with(image=_header("<U4", [2], b"\0" * 32)), [IMAGE, "<U4"]),
    ("complex state on the wire", _with(state=_header("<c16", [8], b"\0" * 128)), [STATE, "<c16"]),
    ("bytes shorter than the shape", _with(state=_header("<f4", [8], b"\0" * 31)), [STATE, "needs 32 bytes, got 31"]),
    ("bytes longer than the shape", _with(state=_header("<f4", [8], b"\0" * 4096)), [STATE, "got 4096"]),
    ("absurd shape", _with(image=_header("|u1", [2**40, 2**40, 0], b"")), [IMAGE, "shape"]),
    ("negative shape", _with(image=_header("|u1", [-1, 4, 3], b"")), [IMAGE, "shape"]),
    ("100-dim shape", _with(image=_header("|u1", [1] * 100, b"\0")), [IMAGE, "shape"]),
    ("nested 40 deep", _with(extra=_nested(40)), ["nested deeper than 32"]),
    # Millions of tiny msgpack values would keep the event loop (every client) busy for seconds.
    ("a list of 100001 values", _with(extra=[None] * 100_001), ["not a msgpack-numpy message", "max_array_len"]),
    ("11 lists of 10000 values", _with(extra=[[0] * 10_000] * 11), ["more than 100000 values"]),
    ("NaN pixel", _with(image=_image(np.nan)), [IMAGE, "finite", "NaN or inf"]),
    ("inf pixel", _with(image=_image(np.inf)), [IMAGE, "NaN or inf"]),
    ("1e30 pixel", _with(image=_image(1e30)), [IMAGE, "[0, 1]", "1e+30"]),
    ("float image in 0..255", _with(image=np.full((24, 32, 3), 200.0, np.float32)), [IMAGE, "[0, 1]", "200"]),
    ("0x0 image", _with(image=np.zeros((0, 0, 3), np.uint8)), [IMAGE, "at least 1x1", "(0, 0, 3)"]),
    ("1-pixel-high strip", _with(image=np.zeros((1, 40, 3), np.uint8)), [IMAGE, "elongated", "(1, 40, 3)"]),
    ("image without channels", _with(image=np.zeros((24, 32), np.uint8)), [IMAGE, "[H, W, 3]", "(24, 32)"]),
    ("4-channel image", _with(image=np.zeros((24, 32, 4), np.uint8)), [IMAGE, "(24, 32, 4)"]),
    ("int32 image", _with(image=np.zeros((24, 32, 3), np.int32)), [IMAGE, "uint8 or float", "int32"]),
    ("image as a string", _with(image="a cat"), [IMAGE, "got str"]),
    ("missing camera", _with(**{"observation/wrist_image": None}), ["observation/wrist_image: missing"]),
    ("missing state", _with(state=None), [STATE, "missing", "length 8"]),
    ("NaN state", _with(state=np.array([0, 1, np.nan, 0, 0, 0, 0, 0], np.float32)), [STATE, "NaN", "[2]"]),
    ("inf state", _with(state=np.full(8, -np.inf, np.float64)), [STATE, "NaN, inf"]),
    ("state beyond float32", _with(state=np.full(8, 1e300)), [STATE, "beyond float32"]),
    ("state of rank 2", _with(state=np.zeros((2, 4), np.float32)), [STATE, "length 8", "(2, 4) float32"]),
    ("state too short", _with(state=np.zeros(5, np.float32)), [STATE, "length 8", "(5,)"]),
    ("state too long", _with(state=np.zeros(9, np.float32)), [STATE, "(9,)"]),
    ("bool state", _with(state=np.ones(8, bool)), [STATE, "bool"]),
    ("state as a dict", _with(state={"a": 1}), [f"{STATE}/a", "missing"]),
    ("prompt as a number", _with(prompt=5), ["prompt: expected a str, got int"]),
    ("prompt as bytes", _with(prompt=b"reach"), ["prompt: expected a str, got bytes"]),
    ("prompt of 100k characters", _with(prompt="x" * 100_000), ["prompt", "at most 2000", "100000"]),
]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("faults") / "student", tiny_config(depth=1))


@pytest.fixture(scope="module")
def served(tiny_root):
    policy = load_policy(tiny_root, env="libero", tokenizer_path=tiny_root / "tokenizer.model", noise_seed=1)
    want = policy.infer(_good())["actions"]
    server = PolicyServer(policy.infer, policy.metadata, host="127.0.0.1", port=0)
    port = server.start_in_thread()
    yield policy, server, port, want
    server.stop()


def _connect(port):
    ws = websockets.sync.client.connect(f"ws://127.0.0.1:{port}", open_timeout=TIMEOUT, close_timeout=1)
    ws.recv(timeout=TIMEOUT)  # metadata
    return ws


def _assert_good_reply(ws, want):
    ws.send(msgpack_numpy.packb(_good()))
    reply = ws.recv(timeout=TIMEOUT)
    assert isinstance(reply, bytes), reply
    np.testing.assert_array_equal(msgpack_numpy.unpackb(reply)["actions"], want)


def test_every_hostile_request_is_refused_by_name_and_the_connection_keeps_serving(served):
    _, server, port, want = served
    assert np.all(np.isfinite(want)) and want.shape == (5, 7)
    errors_before = server.errors
    with _connect(port) as ws:
        for case, request, expected in HOSTILE:
            ws.send(msgpack_numpy.packb(request))
            reply = ws.recv(timeout=TIMEOUT)
            assert isinstance(reply, str), f"{case}: served a reply"
            for text in expected:
                assert text in reply, f"{case}: {text!r} not in {reply!r}"
            # One short line, no traceback, client-supplied junk not echoed at length.
            assert "\n" not in reply and "Traceback" not in reply and len(reply) < 400, f"{case}: {reply!r}"
            _assert_good_reply(ws, want)
    assert server.errors - errors_before == len(HOSTILE)


def test_undecodable_frames_are_refused_and_the_connection_keeps_serving(served):
    _, _, port, want = served
    with _connect(port) as ws:
        for frame, expected in [(b"\xc1", "not a msgpack-numpy message"),
                                (msgpack.packb({"a": b"\xff"})[:-1], "not a msgpack-numpy message"),
                                (msgpack_numpy.packb(np.zeros(3, np.float32)), "expected an observation dict"),
                                (msgpack.packb(_header("|O", [1], b"\0" * 8)), "request: expected a bool, integer")]:
            ws.send(frame)
            reply = ws.recv(timeout=TIMEOUT)
            assert isinstance(reply, str) and expected in reply, reply
            _assert_good_reply(ws, want)


def test_refusals_in_process_name_dtype_and_shape(served):
    policy, _, _, want = served
    with pytest.raises(ValueError, match=r"observation/state: expected a finite real vector of length 8, "
                                         r"got shape \(2, 4\) complex128"):
        policy.infer(_with(state=np.zeros((2, 4), np.complex128)))
    # What openpi accepts still passes: CHW images (the same pixels give the same actions), float images in [0, 1].
    np.testing.assert_array_equal(policy.infer(_with(image=np.moveaxis(_good()[IMAGE], -1, 0)))["actions"], want)
    floats = policy.infer(_with(image=np.random.default_rng(1).uniform(0, 1, (24, 32, 3))))["actions"]
    assert floats.shape == want.shape and np.all(np.isfinite(floats))


def test_nan_actions_are_never_sent(served):
    policy, _, _, _ = served
    # One NaN weight (what a flipped exponent bit gives) poisons every action.
    params = jax.tree.map(np.array, policy.params)
    params["action_out_proj"]["kernel"][3, 0] = np.nan
    broken = Policy(policy.config, params, input_transform=policy.input_transform,
                    output_transform=policy.output_transform, noise_seed=1, check_input=policy.check_input)
    with pytest.raises(ValueError, match="actions: the policy produced NaN or inf"):
        broken.infer(_good())


def test_frames_over_the_limit_close_only_their_connection(served):
    policy, _, _, want = served
    small = PolicyServer(policy.infer, policy.metadata, host="127.0.0.1", port=0, max_frame_bytes=64 * 1024)
    port = small.start_in_thread()
    try:
        under, over = msgpack_numpy.packb(_good(size=(80, 100))), msgpack_numpy.packb(_good(size=(120, 160)))
        assert len(under) < 64 * 1024 < len(over) < 2 * 64 * 1024
        with _connect(port) as ws:
            ws.send(under)
            assert isinstance(ws.recv(timeout=TIMEOUT), bytes)
            ws.send(over)
            with pytest.raises(ConnectionClosedError) as e:
                ws.recv(timeout=TIMEOUT)
            assert e.value.rcvd.code == 1009
        with _connect(port) as ws:  # the server itself goes on
            _assert_good_reply(ws, want)
        deadline = time.monotonic() + TIMEOUT
        while small.errors < 1 and time.monotonic() < deadline:  # the closed handler counts it asynchronously
            time.sleep(0.01)
        assert small.errors == 1 and small.requests_served == 2
    finally:
        small.stop()


def test_default_frame_limit_fits_three_vga_float_cameras():
    obs = {f"images/cam_{i}": np.zeros((480, 640, 3), np.float32) for i in range(3)}
    obs |= {"state": np.zeros(14, np.float32), "prompt": "x" * 2000}
    assert len(msgpack_numpy.packb(obs)) < DEFAULT_MAX_FRAME_BYTES < 2 * len(msgpack_numpy.packb(obs))


# ----------------------------------------------------------------------------- startup

def _stats_file(path, state_dim=8, action_dim=7, edit=None):
    stats = {k: v.to_json() for k, v in tiny_norm_stats(state_dim, action_dim).items()}
    if edit:
        edit(stats)
    path.write_text(json.dumps({"norm_stats": stats}))  # json writes NaN / Infinity literals
    return path


BAD_STATS = [
    ("NaN mean", "libero", {"edit": lambda s: s["state"]["mean"].__setitem__(2, float("nan"))},
     r"state\.mean.*NaN.*\[2\]"),
    ("inf q99", "libero", {"edit": lambda s: s["actions"]["q99"].__setitem__(0, float("inf"))},
     r"actions\.q99.*NaN/inf"),
    ("state stats shorter than the robot's state", "libero", {"state_dim": 6},
     r"'state' has 6 dims, expected at least 8"),
    ("action stats shorter than the robot's actions", "libero", {"action_dim": 3},
     r"'actions' has 3 dims, expected at least 7"),
    ("stats longer than the model's action_dim", "demo", {"state_dim": 12},
     r"'state' has 12 dims, expected at most the model's action_dim 8"),
    ("robot state longer than the model's action_dim", "aloha", {"state_dim": 14, "action_dim": 14},
     r"has 14 dims, expected at most the model's action_dim 8"),
    ("no actions entry", "libero", {"edit": lambda s: s.pop("actions")}, r"no 'actions' entry"),
]


@pytest.mark.parametrize("case, env, kwargs, expected", BAD_STATS, ids=[c[0] for c in BAD_STATS])
def test_bad_norm_stats_are_refused_naming_the_file(tmp_path, case, env, kwargs, expected):
    path = _stats_file(tmp_path / "norm_stats.json", **kwargs)
    with pytest.raises(ValueError, match=expected) as e:
        checked_norm_stats(path, tiny_config(depth=1), get_preset(env))
    assert str(path) in str(e.value), case


@pytest.mark.parametrize("kwargs, expected", [BAD_STATS[0][2:], BAD_STATS[2][2:]], ids=["NaN", "wrong dim"])
def test_load_policy_refuses_bad_norm_stats(tiny_root, tmp_path, kwargs, expected):
    path = _stats_file(tmp_path / "norm_stats.json", **kwargs)
    with pytest.raises(ValueError, match=expected) as e:
        load_policy(tiny_root, env="libero", tokenizer_path=tiny_root / "tokenizer.model", norm_stats_path=path)
    assert str(path) in str(e.value)


def test_good_norm_stats_still_load(tiny_root, tmp_path):
    # Stats longer than the robot's vectors (up to the model's action_dim) are sliced, as openpi does.
    path = _stats_file(tmp_path / "norm_stats.json", state_dim=8, action_dim=8)
    policy = load_policy(tiny_root, env="libero", tokenizer_path=tiny_root / "tokenizer.model", norm_stats_path=path)
    assert policy.metadata["robot_action_dim"] == 7 and norm_stats.load(path)["actions"].dim == 8
    actions = policy.infer(_good())["actions"]
    assert actions.shape == (5, 7) and np.all(np.isfinite(actions))


def test_server_refuses_to_start_with_one_error_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "shallow_pi_jax.serve", "--checkpoint", str(tmp_path / "nothing_here"),
                          "--env", "demo", "--no-warmup", "--port", "0"], capture_output=True, text=True, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert "nothing_here" in lines[0] and "serving" not in run.stdout
