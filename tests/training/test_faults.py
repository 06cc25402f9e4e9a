"""The trainer under faults, run as `python -m shallow_pi_jax.train` the way a user runs it.

Every fatal error (bad data, an error in a data thread, a read-only or full disk at checkpoint
time) ends the process within a bounded time with one `error: ...` line and no traceback; a corrupt
latest checkpoint falls back to the previous one; a resume that changes what was trained is refused
with the differing keys unless --force. Faults are injected inside the trainer process by its config
file (a config file is Python the trainer runs): they hit orbax's own background threads and the
tf.data worker threads, where the real faults happen.
"""
import concurrent.futures
import dataclasses
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

import numpy as np
import pytest
from conftest import FAST_COMPILE

from shallow_pi_jax.data import norm_stats as ns
from shallow_pi_jax.data import synthetic
from shallow_pi_jax.training import resume

REPO = pathlib.Path(__file__).parents[2]
EXIT_WITHIN_S = 60   # from the `error:` line to the end of the process
HANG_S = 300         # a run still going after this is a hang: killed, and the test fails

CONFIG = r'''
import builtins, errno, os, re

from shallow_pi_jax.training import recipes

STEP_TMP = re.compile(r"/checkpoints/(\d+)\.orbax-checkpoint-tmp(/|$)")


def _new_step(path):
    m = STEP_TMP.search(os.fspath(path))
    return m is not None and int(m.group(1)) > 4  # the shared run has steps 2 and 4


def _inject(fault):
    if fault == "readonly":  # the checkpoint directory became read-only after step 4
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if _new_step(path):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real_mkdir(path, *args, **kwargs)
        os.mkdir = mkdir
    elif fault == "enospc":  # the disk filled up after step 4: orbax's background writers fail
        real_open = builtins.open

        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax") and _new_step(file):
                raise OSError(errno.ENOSPC, "No space left on device", os.fspath(file))
            return real_open(file, mode, *args, **kwargs)
        builtins.open = open_
    elif fault == "datathread":  # an exception inside a tf.data worker, some batches into the run
        import tensorflow as tf

        from shallow_pi_jax.data import tf_image
        real_decode, calls = tf_image.decode, [0]

        def fail_later(image):
            calls[0] += 1
            if calls[0] > 60:  # a few batches in
                raise RuntimeError("injected fault in a data thread")
            return image

        def decode(encoded):
            image = real_decode(encoded)
            out = tf.numpy_function(fail_later, [image], image.dtype, stateful=True)
            out.set_shape(image.shape)
            return out
        tf_image.decode = decode


def get_config(arg="good"):
    dataset, _, fault = arg.partition(",")
    _inject(fault)
    c = recipes.teacher_config("size=tiny")  # plain training: the whole loop, no teacher to load
    for part in ("llm", "expert"):
        c.model[part]["depth"] = 2
    c.model["siglip"]["depth"] = 1
    c.student.depth = 2
    c.data.datasets[0]["name"] = dataset
    c.data.datasets[0]["data_dir"] = {root!r}
    c.data.tokenizer_path, c.data.norm_stats_path = {tok!r}, {stats!r}
    c.num_steps, c.checkpoint_every, c.log_every = 4, 2, 1
    return c
'''


@dataclasses.dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    exit_after_error_s: float | None  # from the first `error:` line to the process's end

    @property
    def errors(self):
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]


def _read(stream, sink):
    for line in stream:
        sink.append((time.monotonic(), line))


def train(setup, workdir, *args) -> Run:
    """The trainer as a subprocess; killed (with its process group) if it outlives HANG_S."""
    cmd = [sys.executable, "-m", "shallow_pi_jax.train", f"--config={setup['config']}:{args[0]}",
           f"--workdir={workdir}", *args[1:]]
    proc = subprocess.Popen(cmd, cwd=REPO, env=setup["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    setup["procs"].append(proc)
    out, err = [], []
    readers = [threading.Thread(target=_read, args=(s, sink), daemon=True)
               for s, sink in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    try:
        proc.wait(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        pass
    end = time.monotonic()
    hung = proc.poll() is None
    if hung:
        _kill(proc)
    for r in readers:
        r.join(timeout=10)
    stderr = "".join(line for _, line in err)
    assert not hung, f"{' '.join(cmd)} still running after {HANG_S} s:\n{stderr[-3000:]}"
    error_at = next((t for t, line in err if line.startswith("error: ")), None)
    return Run(proc.returncode, "".join(line for _, line in out), stderr,
               None if error_at is None else end - error_at)


def _kill(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def assert_one_line_error(run: Run, pattern: str) -> str:
    assert run.returncode == 1, (run.returncode, run.stderr[-3000:])
    assert len(run.errors) == 1, run.stderr[-3000:]
    assert re.search(pattern, run.errors[0]), run.errors[0]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.exit_after_error_s < EXIT_WITHIN_S, run.exit_after_error_s
    return run.errors[0]


def losses(workdir) -> list[dict[int, float]]:
    """The `loss` scalars of each TensorBoard events file (one per run of the trainer), oldest first."""
    import tensorflow as tf

    runs = []
    for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
        found = {}
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                if v.tag == "loss":
                    found[event.step] = v.simple_value
        runs.append(found)
    return runs


def complete_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _stats(episodes):
    state = np.concatenate([[s["observation"]["state"] for s in ep["steps"]] for ep in episodes])
    actions = np.concatenate([[s["action"] for s in ep["steps"]] for ep in episodes])

    def norm(x):
        x = np.pad(x, [(0, 0), (0, 8 - x.shape[1])])
        return ns.NormStats(x.mean(0), x.std(0), np.quantile(x, 0.01, 0), np.quantile(x, 0.99, 0))
    return {"state": norm(state), "actions": norm(actions)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    """Datasets (good; one with a NaN action), tokenizer, norm stats, the config file, and a shared
    JAX compilation cache so that only the first run compiles the step."""
    root = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(0)
    good = [synthetic.libero_episode(rng, 12, index=i) for i in range(8)]
    synthetic.write_dataset("good", str(root), synthetic.libero_features(), good)
    nan_ep = synthetic.libero_episode(rng, 12, index=9)
    nan_ep["steps"][3]["action"][2] = np.nan
    # Fewer frames than the shuffle buffer: the bad episode is read before the first batch.
    synthetic.write_dataset("has_nan", str(root), synthetic.libero_features(), [good[0], nan_ep, good[1]])
    tok = tokenizer
    ns.save(_stats(good), root / "norm_stats.json")
    config = root / "faults_config.py"
    config.write_text(CONFIG.replace("{root!r}", repr(str(root))).replace("{tok!r}", repr(tok))
                      .replace("{stats!r}", repr(str(root / "norm_stats.json"))))
    # A user's shell: no verbosity asked for, and no TF log level left behind by the jax this pytest
    # process imported first (jax sets TF_CPP_MIN_LOG_LEVEL=1; the trainer's own default is 2).
    env = {k: v for k, v in os.environ.items() if k not in ("SHALLOW_PI_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    env.update(XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    setup = {"root": root, "config": str(config), "env": env, "procs": []}
    yield setup
    for proc in setup["procs"]:  # a test stopped half-way leaves no trainer behind
        _kill(proc)


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt_latest(wd):
    _truncate(wd / "checkpoints" / "4" / "default" / "_METADATA")


def _corrupt_all(wd):
    for step in (2, 4):
        _truncate(wd / "checkpoints" / str(step) / "default" / "_METADATA")


def _drop_latest(wd):
    shutil.rmtree(wd / "checkpoints" / "4")


# name → (what is done to a copy of the shared run first, the trainer's arguments after --workdir)
SCENARIOS = {
    "datathread": (None, ["good,datathread", "--config.num_steps=30"]),
    "readonly": (None, ["good,readonly", "--config.num_steps=8"]),
    "enospc": (None, ["good,enospc", "--config.num_steps=8"]),
    "corrupt_latest": (_corrupt_latest, ["good"]),
    "clean_resume": (_drop_latest, ["good"]),  # what corrupt_latest must reproduce
    "force": (None, ["good", "--config.data.shuffle_buffer=32", "--config.num_steps=5", "--force"]),
    "corrupt_all": (_corrupt_all, ["good"]),
    "depth": (None, ["good", "--config.student.depth=1", "--config.num_steps=6"]),
}


@pytest.fixture(scope="module")
def runs(setup):
    """Every scenario's Run (a future), run concurrently (each is mostly one core's start-up work).

    First the shared run, trained to step 4 (checkpoints 2 and 4); each scenario works on its own
    copy of it. Every scenario but "nan" resumes it (num_steps may grow freely on resume)."""
    root = setup["root"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = {"nan": pool.submit(train, setup, root / "nan_run", "has_nan")}
        shared = root / "shared"
        first = train(setup, shared, "good")
        assert first.returncode == 0, first.stderr[-3000:]
        assert complete_steps(shared) == [2, 4]

        def scenario(name, prepare, args):
            wd = root / name
            shutil.copytree(shared, wd)
            before = (wd / "config.json").read_bytes()
            if prepare is not None:
                prepare(wd)
            return wd, before, train(setup, wd, *args)

        for name, (prepare, args) in SCENARIOS.items():
            futures[name] = pool.submit(scenario, name, prepare, args)
        yield {"shared": shared, **futures}


@pytest.mark.slow
def test_nan_action_in_the_data_exits_with_one_line_and_writes_nothing(runs):
    run = runs["nan"].result()
    assert_one_line_error(run, r"dataset 'has_nan', episode .*episode_9\.hdf5.*field 'actions'.* NaN/inf "
                               r"values \(first at step 3, dim 2\).*skip_bad_episodes")
    assert not (runs["shared"].parent / "nan_run").exists()  # nothing written by a run that never stepped


@pytest.mark.slow
def test_error_in_a_data_thread_exits_with_one_line(runs):
    _, _, run = runs["datathread"].result()
    assert_one_line_error(run, r"^error: data pipeline failed: .*RuntimeError: injected fault in a data thread$")


@pytest.mark.slow
def test_read_only_checkpoint_directory_exits_with_one_line(runs):
    wd, _, run = runs["readonly"].result()
    ck = re.escape(str(wd / "checkpoints"))
    assert_one_line_error(run, rf"^error: checkpoint step 6 could not be written to {ck} "
                               r"\(Permission denied: .*6\.orbax-checkpoint-tmp\); the last complete step is 4$")
    assert complete_steps(wd) == [2, 4]


@pytest.mark.slow
def test_full_disk_during_a_background_save_exits_with_one_line(runs):
    wd, _, run = runs["enospc"].result()
    ck = re.escape(str(wd / "checkpoints"))
    assert_one_line_error(run, rf"^error: checkpoint step 6 could not be written to {ck} "
                               r"\(No space left on device: .*\); the last complete step is 4$")
    assert complete_steps(wd) == [2, 4]


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(runs):
    wd, _, run = runs["corrupt_latest"].result()
    assert run.returncode == 0, run.stderr[-3000:]
    ck = wd / "checkpoints"
    assert re.search(rf"checkpoint step 4 in {re.escape(str(ck))} does not restore \(.*\); moved it to "
                     rf"{re.escape(str(wd / 'checkpoints_bad' / '4'))}; resuming from step 2\n", run.stdout), run.stdout
    assert f"resumed from {ck} at step 2" in run.stdout
    assert (wd / "checkpoints_bad" / "4" / "default").is_dir() and complete_steps(wd) == [2, 4]
    # Steps 3 and 4 again, from step 2's checkpoint and the same batches: bit for bit the losses of a
    # clean resume from step 2.
    clean_wd, _, clean = runs["clean_resume"].result()
    assert clean.returncode == 0 and f"resumed from {clean_wd / 'checkpoints'} at step 2" in clean.stdout
    expected, again = losses(clean_wd)[-1], losses(wd)[-1]
    assert sorted(again) == [3, 4] and again == expected


@pytest.mark.slow
def test_no_restorable_checkpoint_is_one_line_and_moves_nothing(runs):
    wd, _, run = runs["corrupt_all"].result()
    ck = re.escape(str(wd / "checkpoints"))
    assert_one_line_error(run, rf"^error: {ck}: no checkpoint restores \(tried steps 4, 2; ")
    assert complete_steps(wd) == [2, 4] and not (wd / "checkpoints_bad").exists()


@pytest.mark.slow
def test_resume_with_another_depth_is_refused_and_config_json_kept(runs):
    wd, before, run = runs["depth"].result()
    error = assert_one_line_error(run, rf"^error: {re.escape(str(wd))} was trained with another config; these keys "
                                       r"differ from its config.json \(old → new\): student.depth: 2 → 1\. .*--force")
    assert "num_steps" not in error  # a longer run is not a different one
    assert (wd / "config.json").read_bytes() == before
    assert sorted(p.name for p in wd.iterdir()) == ["checkpoints", "config.json", "student", "tensorboard"]
    assert complete_steps(wd) == [2, 4]


@pytest.mark.slow
def test_force_resumes_with_a_changed_config_and_keeps_the_old_one(runs):
    wd, before, run = runs["force"].result()
    assert run.returncode == 0, run.stderr[-3000:]
    assert "--force: resuming with a changed config (data.shuffle_buffer: 64 → 32)" in run.stdout
    assert (wd / "config.json.1").read_bytes() == before
    assert json.loads((wd / "config.json").read_text())["data"]["shuffle_buffer"] == 32
    assert complete_steps(wd)[-1] == 5


def test_a_key_added_since_the_run_was_saved_resumes_only_at_the_older_behaviour():
    old = {"student": {"depth": 6, "layer_map": "uniform"}, "num_steps": 10}
    new = {"student": {"depth": 6, "layer_map": "uniform", "expert_map": "same"}, "num_steps": 20}
    refused, allowed = resume.config_changes(old, new)
    assert refused == {} and set(allowed) == {"num_steps", "student.expert_map"}
    new["student"]["expert_map"] = "uniform"  # a change of what is trained is still refused
    refused, _ = resume.config_changes(old, new)
    assert refused == {"student.expert_map": ("<absent>", "uniform")}
