"""The trainer as a multi-process JAX job on one machine: `python -m shallow_pi_jax.launch`, 2 processes ×
4 simulated CPU devices (gloo collectives) against 1 process × 8 devices.

Data streams: the global batch is the same examples for 2 × 4 and 1 × 8, step by step, and over an epoch
every frame once. Same numbers: every logged metric at every step, and the exported student. A process
killed with SIGKILL stops the job within a bounded time, and both restarted resume from the last complete
checkpoint with the numbers of a 1 × 8 resume from it. Local ports only; every process is killed in the end.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
import pytest
from conftest import FAST_COMPILE

from shallow_pi_jax import launch
from shallow_pi_jax.checkpoint import openpi_params
from shallow_pi_jax.data import norm_stats as ns
from shallow_pi_jax.data import synthetic
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.data.pipeline import make_dataset
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.params import param_shapes
from shallow_pi_jax.training import distributed, recipes, sharding

REPO = pathlib.Path(__file__).parents[2]
RUN_S = 600         # one launch, on a loaded 2-core host; a job still running after this is a hang: killed, failed
STOP_WITHIN_S = 45  # from the SIGKILL of one process to the launcher's exit
CONNECT_S = 5       # SHALLOW_PI_INIT_TIMEOUT_S of a process whose peer never starts
EPISODES, STEPS = 16, 6  # 96 frames: 12 per stream of 8

CONFIG = r'''
from shallow_pi_jax.training import recipes


def get_config(arg=None):
    # experiments/l6.py:tiny at depth 2 → 1; the student's layer is the teacher's last, so that its attention
    # (on the embeddings) differs from the teacher's there (on layer 0's output): attention KD well above 0.
    c = recipes.distill_config(1, "size=tiny,layer_map=last")
    for part in ("llm", "expert"):
        c.model[part]["depth"] = 2
    c.model["siglip"]["depth"] = 1
    c.teacher.params = {teacher!r}
    c.data.augment = True  # so that the 2 × 4 vs 1 × 8 runs compare augmented, shuffled streams
    c.data.datasets[0]["name"] = "mp"
    c.data.datasets[0]["data_dir"] = {root!r}
    c.data.tokenizer_path, c.data.norm_stats_path = {tok!r}, {stats!r}
    return c
'''


def _stats(episodes):
    def norm(x):
        x = np.pad(x, [(0, 0), (0, 8 - x.shape[1])])
        return ns.NormStats(x.mean(0), x.std(0), np.quantile(x, 0.01, 0), np.quantile(x, 0.99, 0))
    state = np.concatenate([[s["observation"]["state"] for s in ep["steps"]] for ep in episodes])
    actions = np.concatenate([[s["action"] for s in ep["steps"]] for ep in episodes])
    return {"state": norm(state), "actions": norm(actions)}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    """A synthetic LIBERO dataset (every image encodes its episode and step), tokenizer, norm stats, a
    random 2-layer tiny teacher, the config file, and the jobs started (killed at the end)."""
    root = tmp_path_factory.mktemp("multiprocess")
    rng = np.random.default_rng(0)
    episodes = [synthetic.libero_episode(rng, STEPS, index=i) for i in range(EPISODES)]
    synthetic.write_dataset("mp", str(root), synthetic.libero_features(), episodes)
    tok = tokenizer
    ns.save(_stats(episodes), root / "norm_stats.json")
    config = root / "mp_config.py"
    config.write_text(CONFIG.replace("{root!r}", repr(str(root))).replace("{tok!r}", repr(tok))
                      .replace("{stats!r}", repr(str(root / "norm_stats.json")))
                      .replace("{teacher!r}", repr(str(root / "teacher" / "params"))))
    # Random normal leaves (numpy; init_params would compile the whole model): no zero-initialised layer, so
    # the 1-layer student differs from its 2-layer teacher and the KD losses are far from 0.
    shapes = param_shapes(ModelConfig.from_dict(recipes.load(str(config)).model))
    teacher = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)
    openpi_params.save_params(teacher, root / "teacher" / "params")
    env = {k: v for k, v in os.environ.items() if k not in ("SHALLOW_PI_VERBOSE", "XLA_FLAGS")}
    # The compiled step is the cost of every run: LLVM's optimisations off (~30 % off the compile, the same
    # for both layouts), and a cache, so that the kill test's runs reuse the programs of the first two.
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               XLA_FLAGS=FAST_COMPILE,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    w = {"root": root, "config": str(config), "tok": tok, "env": env, "jobs": []}
    yield w
    for job in w["jobs"]:
        _kill(job.proc)


class Job:
    """`python -m shallow_pi_jax.launch` in its own process group, its output collected line by line."""

    def __init__(self, world, processes, devices, workdir, *train_args):
        cmd = [sys.executable, "-m", "shallow_pi_jax.launch", f"--processes={processes}",
               f"--devices-per-process={devices}", "--", f"--config={world['config']}", f"--workdir={workdir}",
               *train_args]
        self.workdir = pathlib.Path(workdir)
        self.lines = []
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=world["env"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        world["jobs"].append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def text(self):
        return "\n".join(line for _, line in self.lines)

    def pid(self, index):
        for _, line in self.lines:
            m = re.match(rf"launch: process {index} of \d+: pid (\d+)", line)
            if m:
                return int(m.group(1))
        return None

    def wait(self, timeout=RUN_S):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            raise AssertionError(f"job in {self.workdir} still running after {timeout} s:\n{self.text[-4000:]}")
        self._reader.join(timeout=10)
        return self


def _kill(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def scalars(workdir) -> list[dict[int, dict[str, float]]]:
    """{step: {tag: value}} of each TensorBoard events file (one per run of the trainer), oldest first."""
    import tensorflow as tf

    runs = []
    for path in sorted((pathlib.Path(workdir) / "tensorboard").glob("events.out.tfevents.*")):
        found = {}
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                # Scalars only (not the memory text at step 0); wall-clock figures are not numbers of the run.
                if v.HasField("simple_value") and v.tag not in ("step_time_s", "samples_per_s"):
                    found.setdefault(event.step, {})[v.tag] = v.simple_value
        runs.append(found)
    return runs


def assert_same_numbers(got: dict, want: dict):
    assert got.keys() == want.keys(), (sorted(got), sorted(want))
    for step in want:
        assert got[step].keys() == want[step].keys()
        for tag, v in want[step].items():
            assert got[step][tag] == pytest.approx(v, rel=1e-5, abs=1e-7), (step, tag, got[step][tag], v)


def complete_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def runs(world):
    """The 1 × 8 and 2 × 4 runs of the same config (4 steps, checkpoints at 2 and 4), side by side."""
    root = world["root"]
    one = Job(world, 1, 8, root / "1x8")
    two = Job(world, 2, 4, root / "2x4")
    return {"1x8": one.wait(), "2x4": two.wait()}


# ----------------------------------------------------------------------------- data streams


def _data_cfg(world, **kw):
    base = dict(datasets=(DatasetSpec("mp", str(world["root"]), "libero"),), batch_size=16, horizon=4, action_dim=8,
                image_size=16, max_token_len=32, tokenizer_path=world["tok"],
                norm_stats_path=str(world["root"] / "norm_stats.json"), cameras=("base_0_rgb", "left_wrist_0_rgb"),
                seed=5, num_streams=8, num_parallel_calls=1, augment=False)
    base.update(kw)
    return DataConfig(**base)


def _frame_ids(batch):
    """(episode, step) of every example: its base camera's red and green pixel values."""
    px = np.rint((batch["images"]["base_0_rgb"][:, 0, 0, :2] + 1.0) / 2.0 * 255.0).astype(int)
    return [tuple(p) for p in px]


def _global_batches(world, processes, steps, **kw):
    """The global batches of `processes` processes (each its block of the 8 streams, concatenated)."""
    its = [make_dataset(_data_cfg(world, batch_size=16 // processes, process_index=i, process_count=processes,
                                  **kw)) for i in range(processes)]
    out = []
    for _ in range(steps):
        parts = [next(it) for it in its]
        out.append(jax.tree.map(lambda *xs: np.concatenate(xs), *parts))
    for it in its:
        it.close()
    return out


def _assert_batches_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_every_frame_once_per_epoch_and_the_same_global_batch_for_2x4_and_1x8(world):
    # No shuffle buffer: a stream's first epoch is its shard's frames, each once (its files in shuffled order).
    steps = EPISODES * STEPS // 16  # one epoch: 12 frames per stream, 2 per step
    one = _global_batches(world, 1, steps, shuffle_buffer=1)
    two = _global_batches(world, 2, steps, shuffle_buffer=1)
    for a, b in zip(one, two, strict=True):
        _assert_batches_equal(a, b)
    seen = [f for batch in two for f in _frame_ids(batch)]
    assert sorted(seen) == [(e, t) for e in range(EPISODES) for t in range(STEPS)]
    # Stream j fills rows 2j, 2j + 1 of every batch, from its own episodes only.
    episodes_of = [{f[0] for batch in two for f in _frame_ids(batch)[2 * j: 2 * j + 2]} for j in range(8)]
    assert all(len(e) == EPISODES // 8 for e in episodes_of)
    assert len(set().union(*episodes_of)) == EPISODES


def test_process_streams_follow_the_mesh_rows():
    mesh = sharding.make_mesh(1, -1)  # the 8 simulated devices of this pytest process
    assert sharding.process_streams(mesh, 8) == tuple(range(8))
    assert sharding.process_streams(mesh, 16) == tuple(range(16))
    with pytest.raises(ValueError, match=r"data.num_streams: expected a multiple of the number of devices \(8\), "
                                         r"got 4"):
        sharding.process_streams(mesh, 4)


@pytest.mark.slow
def test_stream_config_errors_name_the_field(world):
    with pytest.raises(ValueError, match=r"data.num_streams: expected a positive int or None, got 0"):
        _data_cfg(world, num_streams=0)
    with pytest.raises(ValueError, match=r"data.num_streams: expected a multiple of the process count \(3\), got 8"):
        _data_cfg(world, process_index=0, process_count=3).streams()
    with pytest.raises(ValueError, match=r"data.batch_size \(6 per process\): expected a multiple of the 4 streams"):
        _data_cfg(world, batch_size=6, process_index=0, process_count=2).streams()


# ----------------------------------------------------------------------------- process count and id


@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"}, r"JAX_PROCESS_ID: expected a process id in 0..1 "
                                                        r"\(JAX_NUM_PROCESSES=2\), got 2"),
    ({"JAX_NUM_PROCESSES": "0", "JAX_PROCESS_ID": "0"}, r"JAX_NUM_PROCESSES: expected a process count >= 1, got 0"),
    ({"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, r"JAX_NUM_PROCESSES: expected an int, got 'two'"),
    ({"JAX_NUM_PROCESSES": "2"}, r"JAX_PROCESS_ID: expected an int, got ''"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1", "JAX_COORDINATOR_ADDRESS": ""},
     r"JAX_COORDINATOR_ADDRESS: expected process 0's host:port, got ''"),
])
def test_a_wrong_process_count_or_id_is_a_clear_error(monkeypatch, env, message):
    for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        distributed.maybe_initialize_distributed("auto")


@pytest.mark.slow
def test_a_process_whose_peer_never_starts_ends_within_the_timeout_naming_itself(world):
    port = launch.free_port()
    env = dict(world["env"], JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0",
               SHALLOW_PI_INIT_TIMEOUT_S=str(CONNECT_S))
    workdir = world["root"] / "alone"
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "shallow_pi_jax.train", f"--config={world['config']}",
                          f"--workdir={workdir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_S)
    assert out.returncode != 0
    assert time.monotonic() - t0 < 120  # imports and the 5 s wait: not jax's default of 5 minutes
    assert (f"jax.distributed: process 0 of 2, coordinator 127.0.0.1:{port}; waiting up to {CONNECT_S} s for every "
            "process to connect") in out.stderr
    assert "DEADLINE_EXCEEDED" in out.stderr, out.stderr[-3000:]
    assert not workdir.exists()


def test_launcher_gives_each_process_its_id_and_devices():
    env = launch.process_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1"}, 1, 2, 1234, 4)
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("2", "1")
    assert env["XLA_FLAGS"] == "--xla_foo=1 --xla_force_host_platform_device_count=4"
    assert env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo"


# ----------------------------------------------------------------------------- the trainer, 2 × 4 vs 1 × 8


@pytest.mark.slow
def test_2x4_logs_the_numbers_of_1x8_at_every_step(runs):
    for name, job in runs.items():
        assert job.proc.returncode == 0, f"{name}:\n{job.text[-4000:]}"
    one, two = scalars(runs["1x8"].workdir), scalars(runs["2x4"].workdir)
    assert len(one) == len(two) == 1
    assert sorted(one[0]) == [1, 2, 3, 4]
    assert {"loss", "loss/task", "loss/velocity_kd", "loss/attention_kd"} <= set(one[0][1])
    assert_same_numbers(two[0], one[0])
    # The 1-layer student is not its 2-layer teacher: the KD terms are compared at real values, not at ~0.
    assert min(one[0][1]["loss/velocity_kd"], one[0][1]["loss/attention_kd"]) > 1e-3, one[0][1]
    assert "compiled train step" in runs["2x4"].text and "on 8 devices" in runs["2x4"].text
    assert complete_steps(runs["2x4"].workdir) == [2, 4]


@pytest.mark.slow
def test_2x4_exports_the_student_of_1x8(runs):
    one = openpi_params.flatten_params(openpi_params.restore_params(runs["1x8"].workdir / "student" / "params"))
    two = openpi_params.flatten_params(openpi_params.restore_params(runs["2x4"].workdir / "student" / "params"))
    assert one.keys() == two.keys()
    for k in one:
        np.testing.assert_allclose(np.asarray(two[k]), np.asarray(one[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    for name in ("model_config.json", "layer_map.json", "checksums.json"):
        assert (runs["2x4"].workdir / "student" / name).is_file()
    assert json.loads((runs["2x4"].workdir / "student" / "model_config.json").read_text()) == json.loads(
        (runs["1x8"].workdir / "student" / "model_config.json").read_text())


@pytest.mark.slow
def test_kill_9_of_one_process_stops_the_job_and_both_resume_from_the_last_complete_checkpoint(world, runs):
    root = world["root"]
    job = Job(world, 2, 4, root / "killed", "--config.num_steps=400")
    deadline = time.monotonic() + RUN_S
    while not (job.workdir / "checkpoints" / "2").is_dir() or job.pid(1) is None:
        assert job.proc.poll() is None, job.text[-4000:]
        assert time.monotonic() < deadline, job.text[-4000:]
        time.sleep(0.2)
    os.kill(job.pid(1), signal.SIGKILL)
    killed_at = time.monotonic()
    job.wait(timeout=STOP_WITHIN_S + 30)
    assert time.monotonic() - killed_at < STOP_WITHIN_S
    assert job.proc.returncode == 128 + signal.SIGKILL, job.text[-4000:]
    assert "launch: process 1 exited with status 137; stopping the other processes" in job.text
    assert not pathlib.Path(f"/proc/{job.pid(0)}").exists()  # the other trainer was stopped, not left behind

    last = complete_steps(job.workdir)[-1]
    shutil.copytree(job.workdir, root / "killed_1x8")
    resume = [f"--config.num_steps={last + 2}"]
    with ThreadPoolExecutor(2) as pool:
        two = pool.submit(lambda: Job(world, 2, 4, job.workdir, *resume).wait())
        one = pool.submit(lambda: Job(world, 1, 8, root / "killed_1x8", *resume).wait())
        two, one = two.result(), one.result()
    for j in (two, one):
        assert j.proc.returncode == 0, j.text[-4000:]
        assert f"resumed from {j.workdir / 'checkpoints'} at step {last}" in j.text
    got, want = scalars(two.workdir)[-1], scalars(one.workdir)[-1]
    assert sorted(want) == [last + 1, last + 2]
    assert_same_numbers(got, want)
