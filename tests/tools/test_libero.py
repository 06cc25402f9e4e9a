"""The real LIBERO benchmark driving our server through tools/libero_client.py, in the client's own venv.

tools/libero_setup.sh makes (or finds, cached under ~/.cache/shallow_pi_jax) the venv with LIBERO and
openpi-client. The server runs a tiny random π0.5 in openpi's checkpoint layout with the libero
preset (so openpi's pi05_libero record: 10-action chunks, of which the client executes 5); a recording
websocket proxy between client and server keeps every request and reply. A second LIBERO process,
written here from openpi's examples/libero/main.py and sharing no code with the client, replays the
episode: same task, seed and initial state, ten no-op steps, then the first five actions of each
recorded reply. openpi's preprocessing of its raw observations must equal what the server received,
bit for bit: that checks the flips, the resize, the state, the prompt, the settling steps, and that
the client executed exactly the actions it was sent (any other action moves the arm elsewhere).
"""
import ctypes.util
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import websockets.exceptions
import websockets.sync.client
import websockets.sync.server
from openpi_client import image_tools, msgpack_numpy

from shallow_pi_jax.serve.testing import tiny_config, write_tiny_checkpoint

REPO = pathlib.Path(__file__).resolve().parents[2]
CLIENT = REPO / "tools" / "libero_client.py"
SETUP = REPO / "tools" / "libero_setup.sh"
MAX_STEPS, WAIT, REPLAN, SEED, TASK = 15, 10, 5, 7, 0
ENV = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "MUJOCO_GL": "egl"}

# openpi's LIBERO loop up to the first request, then the given actions; the raw observation at each
# request step is saved. Runs in the LIBERO venv; the actions come on stdin once the client is done,
# so env creation and reset (most of the cost) overlap with the client's episode.
REPLAY = r"""
import json, os, pathlib, sys
import numpy as np
from libero.libero import benchmark, get_libero_path
from libero.libero.envs import OffScreenRenderEnv
suite_name, task_id, seed, wait, replan, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
    int(sys.argv[5]), sys.argv[6]
suite = benchmark.get_benchmark_dict()[suite_name]()
task = suite.get_task(task_id)
bddl = pathlib.Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=256, camera_widths=256)
env.seed(seed)
env.reset()
obs = env.set_init_state(suite.get_task_init_states(task_id)[0])
for _ in range(wait):
    obs, _, _, _ = env.step([0.0] * 6 + [-1.0])
keys = ("agentview_image", "robot0_eye_in_hand_image", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
raw = {k: [np.array(obs[k])] for k in keys}
actions = json.load(sys.stdin)
for i, action in enumerate(actions):
    obs, _, _, _ = env.step(action)
    if (i + 1) % replan == 0 and i + 1 < len(actions):
        for k in keys:
            raw[k].append(np.array(obs[k]))
env.close()
np.savez(out, prompt=task.language, **{k: np.stack(v) for k, v in raw.items()})
"""


def axis_angle(q) -> np.ndarray:
    """(x, y, z, w) → axis × angle, from the half-angle formula (not robosuite's code path)."""
    x, y, z, w = (float(v) for v in q)
    w = min(max(w, -1.0), 1.0)
    s = math.sqrt(1.0 - w * w)
    return np.zeros(3) if math.isclose(s, 0.0) else np.array([x, y, z]) / s * 2.0 * math.acos(w)


def openpi_image(raw) -> np.ndarray:
    return image_tools.convert_to_uint8(image_tools.resize_with_pad(np.ascontiguousarray(raw[::-1, ::-1]), 224, 224))


def openpi_checkpoint(root: pathlib.Path) -> pathlib.Path:
    """A tiny random π0.5 in openpi's own layout: params/ and assets/physical-intelligence/libero/norm_stats.json,
    nothing else, so the server takes horizon (10) and prompt length from openpi's pi05_libero as for a real one."""
    write_tiny_checkpoint(root, tiny_config(depth=1))
    (root / "model_config.json").unlink()
    (root / "checksums.json").unlink()
    nested = root / "assets" / "physical-intelligence" / "libero" / "norm_stats.json"
    nested.parent.mkdir(parents=True)
    (root / "assets" / "norm_stats.json").rename(nested)
    (root / "tokenizer.model").rename(root.parent / "tokenizer.model")  # PaliGemma's comes apart from openpi's
    return root


@pytest.fixture(scope="module")
def libero_python() -> pathlib.Path:
    # This project's machines carry Mesa's EGL; without it the test would only check the error message.
    if ctypes.util.find_library("EGL") is None and ctypes.util.find_library("OSMesa") is None:
        pytest.fail("neither libEGL nor libOSMesa is installed (Debian: apt-get install libegl1 libegl-mesa0 "
                    "libgl1-mesa-dri libgbm1); LIBERO cannot render offscreen")
    start = time.monotonic()
    out = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"tools/libero_setup.sh exited {out.returncode}:\n{out.stderr[-3000:]}"
    venv = pathlib.Path(out.stdout.strip().splitlines()[-1])
    print(f"LIBERO venv {venv} ready in {time.monotonic() - start:.1f} s")
    return venv / "bin" / "python"


class RecordingProxy:
    """Forwards openpi's strict request → reply protocol to the server and keeps both sides' frames."""

    def __init__(self, upstream_port: int):
        self.upstream = f"ws://127.0.0.1:{upstream_port}"
        self.requests, self.replies = [], []
        self.server = websockets.sync.server.serve(self._handle, "127.0.0.1", 0, max_size=None)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, client):
        with websockets.sync.client.connect(self.upstream, max_size=None) as server:
            client.send(server.recv())  # metadata
            try:
                while True:
                    request = client.recv()
                    self.requests.append(msgpack_numpy.unpackb(request))
                    server.send(request)
                    reply = server.recv()
                    self.replies.append(msgpack_numpy.unpackb(reply) if isinstance(reply, bytes) else reply)
                    client.send(reply)
            except websockets.exceptions.ConnectionClosed:
                pass

    def close(self):
        self.server.shutdown()
        self.thread.join(timeout=10)


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_real_libero_episode_against_our_server(tmp_path, libero_python):
    start = time.monotonic()
    ckpt = openpi_checkpoint(tmp_path / "ckpt")
    log = tmp_path / "serve.log"
    with open(log, "w") as f:
        server = subprocess.Popen(
            [sys.executable, "-m", "shallow_pi_jax.serve", "--checkpoint", str(ckpt), "--env", "libero",
             "--tokenizer", str(tmp_path / "tokenizer.model"), "--host", "127.0.0.1", "--port", "0", "--noise-seed",
             "0"], cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    replay = subprocess.Popen(
        [str(libero_python), "-c", REPLAY, "libero_spatial", str(TASK), str(SEED), str(WAIT), str(REPLAN),
         str(tmp_path / "replay.npz")], env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    proxy = None
    try:
        deadline = time.monotonic() + 240
        while not (found := re.search(r"listening on ws://127\.0\.0\.1:(\d+)", log.read_text())):
            assert server.poll() is None, f"serve exited {server.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"serve did not start:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        proxy = RecordingProxy(int(found.group(1)))
        args = [str(libero_python), str(CLIENT), "--host", "127.0.0.1", "--port", str(proxy.port), "--suite",
                "libero_spatial", "--tasks", str(TASK), "--trials", "1", "--max-steps", str(MAX_STEPS),
                "--out-dir", str(tmp_path / "run")]
        client = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        out, err = client.communicate(timeout=400)
        assert client.returncode == 0, f"client exited {client.returncode}:\n{out}\n{err[-3000:]}"
        # the client and anything it started are gone (MuJoCo's renderer threads, the video encoder)
        assert group_gone(client.pid)
        client_s = time.monotonic() - start

        # 15 policy steps: requests at steps 0, 5, 10, each answered with a [10, 7] chunk (pi05_libero's horizon)
        assert len(proxy.requests) == len(proxy.replies) == MAX_STEPS // REPLAN
        for reply in proxy.replies:
            assert isinstance(reply, dict), f"the server refused a request: {reply}"
            assert reply["actions"].shape == (10, 7) and np.isfinite(reply["actions"]).all()
        executed = np.concatenate([r["actions"][:REPLAN] for r in proxy.replies])[:MAX_STEPS]
        replay_out, _ = replay.communicate(json.dumps(executed.tolist()), timeout=400)
        assert replay.returncode == 0, f"replay exited {replay.returncode}:\n{replay_out[-3000:]}"
        raw = np.load(tmp_path / "replay.npz")
        assert len(raw["agentview_image"]) == len(proxy.requests)
        for k, request in enumerate(proxy.requests):
            assert set(request) == {"observation/image", "observation/wrist_image", "observation/state", "prompt"}
            assert request["prompt"] == str(raw["prompt"])
            for key, cam in (("observation/image", "agentview_image"),
                             ("observation/wrist_image", "robot0_eye_in_hand_image")):
                want = openpi_image(raw[cam][k])
                assert request[key].dtype == np.uint8 and request[key].shape == (224, 224, 3)
                np.testing.assert_array_equal(request[key], want, err_msg=f"request {k}: {key}")
            state = np.concatenate([raw["robot0_eef_pos"][k], axis_angle(raw["robot0_eef_quat"][k]),
                                    raw["robot0_gripper_qpos"][k]])
            np.testing.assert_allclose(request["observation/state"], state, rtol=0, atol=1e-12,
                                       err_msg=f"request {k}: state")
        # the arm moved between requests: the actions were applied, not only received
        assert not np.allclose(proxy.requests[0]["observation/state"], proxy.requests[-1]["observation/state"])

        run = tmp_path / "run"
        results = json.loads((run / "results.json").read_text())
        assert (results["trials"], results["policy_steps"]) == (1, MAX_STEPS)
        assert results["tasks"]["0"]["task"] == str(raw["prompt"])
        episode = json.loads((run / "episodes" / "task00_ep000.json").read_text())
        assert (episode["steps"], episode["queries"], episode["success"]) == (MAX_STEPS, 3, results["successes"] == 1)
        assert (run / episode["video"]).read_bytes()[4:8] == b"ftyp"  # an mp4, one frame per policy step
        assert "| 0 | pick up the black bowl" in (run / "results.md").read_text()
        assert re.search(r"^\[1/1\] task 0 episode 0: (success|failure) in 15 steps .* ETA", out, re.MULTILINE)

        # a rerun resumes: the finished episode is not redone (no request reaches the server)
        out = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "resuming: 1 of 1 episodes" in out.stdout and len(proxy.requests) == MAX_STEPS // REPLAN
        print(f"client episode {client_s:.1f} s ({episode['timing']}), whole test {time.monotonic() - start:.1f} s")
    finally:
        for proc in (replay, server):
            stop(proc)
        if proxy:
            proxy.close()
    assert group_gone(server.pid) and group_gone(replay.pid)


@pytest.mark.parametrize("case", ["wrong_numpy", "libero_missing", "no_renderer", "no_server"])
def test_misconfigured_environment_is_one_line_with_the_fix(tmp_path, libero_python, case):
    env, python = dict(ENV), str(libero_python)
    if case == "wrong_numpy":
        python = sys.executable  # the project's venv: numpy 2
    elif case == "libero_missing":
        # another package under the `libero` import name hides LIBERO's modules
        (tmp_path / "libero").mkdir()
        (tmp_path / "libero" / "__init__.py").write_text("")
        env["PYTHONPATH"] = str(tmp_path)
    elif case == "no_renderer":
        env["__EGL_VENDOR_LIBRARY_FILENAMES"] = str(tmp_path / "none.json")  # glvnd finds no EGL driver
    out = subprocess.run([python, str(CLIENT), "--port", "9", "--connect-timeout", "0", "--out-dir",
                          str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 1 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    want = {"wrong_numpy": r"numpy 2\.\d+.* needs numpy < 2 .*tools/libero_setup\.sh",
            "libero_missing": r"LIBERO or openpi-client is not importable .*libero.*tools/libero_setup\.sh",
            "no_renderer": r"MuJoCo cannot render offscreen \(MUJOCO_GL=egl; .*apt-get install libegl1",
            "no_server": r"no policy server at ws://localhost:9 .*python -m shallow_pi_jax\.serve .*--env libero"}
    assert re.search(want[case], errors[0]), errors[0]
    assert not (tmp_path / "run").exists()  # nothing written before the environment and the server are known
