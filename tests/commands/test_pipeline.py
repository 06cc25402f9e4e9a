"""The README's pipeline as one run, at demo size, each command fed exactly the path the one before printed:

main job (distil, few steps) → make_student → export_torch → export_onnx → onnxruntime == JAX student →
serve + openpi_client (one request, then closed loop on the simulator) → evaluate → bench_inference.

Nothing is hand-made: every input is the previous command's output. The main job uses the embedded
default's cache ($SHALLOW_PI_CACHE, which tests/conftest.py points at the test session's shared cache)
as a user's run does; on a fresh machine the first run builds the demo dataset there once (~70 s).
"""
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from shallow_pi_jax.export.onnx_policy import OnnxPolicy
from shallow_pi_jax.serve.policy import load_policy
from shallow_pi_jax.sim.env import ReachEnv, rollout

pytestmark = [pytest.mark.slow, pytest.mark.torch]

REPO = pathlib.Path(__file__).resolve().parents[2]
# The commands run as a user runs them: one CPU device (conftest simulates 8 for this process only).
ENV = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
STEPS = 3          # distillation steps of the main job: the seams are under test, not the student's quality
TRIALS = 3         # closed-loop episodes on the simulator
PARITY_TOL = 1e-5  # float32, relative to max(1, max |reference|)


def command(*args, timeout=600) -> str:
    """Run `python -m shallow_pi_jax.<args>` (or a script path) from the repository root; its stdout."""
    argv = [sys.executable, *args] if args[0].endswith(".py") else [sys.executable, "-m", *args]
    out = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)} exited {out.returncode}:\n{out.stderr[-3000:]}"
    return out.stdout


def printed(stdout: str, pattern: str) -> str:
    """The one group of `pattern` in a command's stdout: where it says it wrote its output."""
    found = re.findall(pattern, stdout, flags=re.MULTILINE)
    assert len(found) == 1, f"expected one line matching {pattern!r} in the command's output:\n{stdout}"
    return found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, port: int, log: pathlib.Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"serve did not answer /healthz on port {port} within {timeout} s")


def raw_observation(obs: dict) -> dict:
    """A ReachEnv observation as the openpi client sends it (the demo preset's keys)."""
    return {"observation/image": obs["image"], "observation/wrist_image": obs["wrist_image"],
            "observation/state": obs["state"], "prompt": obs["instruction"]}


def test_readme_pipeline_on_its_own_outputs(tmp_path):
    # 1. the main job, as the README runs it, with a few steps
    out = command("shallow_pi_jax.train", "--config", "experiments/l6.py:demo", "--workdir", str(tmp_path / "run"),
                  f"--config.num_steps={STEPS}")
    trained = printed(out, r"^student written to (\S+)")

    # 2. a shallower student of the trained one (make_student reads the trainer's output as a teacher)
    out = command("shallow_pi_jax.make_student", "--teacher", trained, "--depth", "3", "--out",
                  str(tmp_path / "student_l3"))
    student = printed(out, r"^student written to (\S+):")
    record = json.loads((pathlib.Path(student) / "layer_map.json").read_text())
    assert (record["teacher_depth"], record["student_depth"], record["indices"]) == (6, 3, [0, 2, 5])

    # 3. PyTorch, 4. ONNX (export_onnx checks onnxruntime against PyTorch itself)
    out = command("shallow_pi_jax.export_torch", "--params", student, "--out", str(tmp_path / "torch"))
    torch_dir = printed(out, r"^wrote (\S+) \(")
    out = command("shallow_pi_jax.export_onnx", "--torch", torch_dir, "--out", str(tmp_path / "onnx" / "student.onnx"))
    onnx_path = printed(out, r"^exported in .* s: (\S+\.onnx) \(")

    # 5. onnxruntime's actions equal the JAX student's: real simulator observations through the serving
    # transforms, the same noise, model-space actions
    policy = load_policy(student, env="demo", noise_seed=0)
    env = ReachEnv(seed=0)
    inputs = [policy.input_transform(raw_observation(env.reset(seed))) for seed in (100_000, 100_001)]
    batch = {k: ({c: np.stack([i[k][c] for i in inputs]) for c in inputs[0][k]} if isinstance(inputs[0][k], dict)
                 else np.stack([i[k] for i in inputs])) for k in inputs[0]}
    cfg = policy.config
    noise = np.random.default_rng(0).standard_normal((2, cfg.action_horizon, cfg.action_dim)).astype(np.float32)
    want = policy.sample(batch, noise)
    got = OnnxPolicy(onnx_path).infer(batch, noise=noise)["actions"]
    assert got.shape == want.shape == (2, cfg.action_horizon, cfg.action_dim)
    err = np.abs(got - want).max()
    assert err <= PARITY_TOL * max(1.0, np.abs(want).max()), f"onnxruntime vs JAX student: max |diff| {err:.2e}"

    # 6. serve the student; openpi's client gets the JAX policy's own reply, and drives the simulator
    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "w") as f:  # a file, not a pipe: a server that logs every request never blocks on it
        server = subprocess.Popen(
            [sys.executable, "-m", "shallow_pi_jax.serve", "--checkpoint", student, "--env", "demo", "--host",
             "127.0.0.1", "--port", str(port), "--noise-seed", "0"],
            cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_healthy(server, port, log)
        # the client goes where serve says it serves (with --port 0 this would name 0, not the bound port)
        port = int(printed(log.read_text(), r" on ws://127\.0\.0\.1:(\d+)$"))
        client = WebsocketClientPolicy("127.0.0.1", port)
        meta = client.get_server_metadata()
        assert (meta["env"], meta["depth"], meta["layer_map"]["indices"]) == ("demo", 3, [0, 2, 5])
        obs = raw_observation(ReachEnv(seed=0).reset(100_002))
        served = client.infer(obs)["actions"]
        local = policy.infer(obs)["actions"]
        assert served.shape == local.shape == (cfg.action_horizon, meta["robot_action_dim"])
        np.testing.assert_allclose(served, local, rtol=0, atol=PARITY_TOL * max(1.0, np.abs(local).max()))

        out = command("tools/libero_client.py", "--suite", "demo", "--port", str(port), "--trials", str(TRIALS),
                      "--out", str(tmp_path / "closed_loop.json"))
        summary = json.loads((tmp_path / "closed_loop.json").read_text())
        rate = float(printed(out, r"^demo: success rate ([\d.]+) % "))
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert summary["trials"] == TRIALS and summary["success_rate"] == pytest.approx(rate / 100, abs=1e-3)
    # The same episodes run in this process with the same (fixed) noise succeed exactly as the served ones:
    # the client loop (tools/libero_client.py's seeds, env seed 7, replanning every 5) adds nothing of its own.
    local_env = ReachEnv(seed=7)
    local_wins = sum(rollout(local_env, lambda o: policy.infer(raw_observation(o))["actions"], seed=10_000 + t,
                             replan_every=5)["success"] for t in range(TRIALS))
    assert summary["successes"] == local_wins

    # 7. open-loop action error on held-out demo episodes
    out = command("shallow_pi_jax.evaluate", "--checkpoint", student, "--env", "demo", "--episodes", "2",
                  "--max-frames", "32", "--out", str(tmp_path / "eval"))
    eval_dir = pathlib.Path(printed(out, r"^wrote (\S+)/summary\.json"))
    result = json.loads((eval_dir / "summary.json").read_text())
    assert result["student_depth"] == 3 and result["errors"]
    assert all(np.isfinite(r["mae"]) and r["frames"] > 0 for r in result["errors"].values())

    # 8. the cost of this student against its teacher's depth
    out = command("shallow_pi_jax.bench_inference", "--checkpoint", student, "--fast-flops", "--repeats", "2",
                  "--warmup", "1", "--out", str(tmp_path / "bench.json"))
    bench = json.loads(pathlib.Path(printed(out, r"^wrote (\S+)")).read_text())
    assert bench["depths"] == {"teacher": 6, "student": 3}
    # The demo model has 2 cameras; bench_inference reports a model's own camera setting(s).
    setting = next(iter(bench["flops"]["student"]))
    flops = {who: bench["flops"][who][setting]["total"] for who in ("teacher", "student")}
    assert flops["teacher"] > flops["student"] > 0
    assert bench["latency"]["student"] and bench["latency"]["teacher"]
