"""Every shell and Python block of README.md and docs/*.md runs here, or says why it cannot.

The convention, in the Markdown itself (HTML comments do not render):

    ```bash / ```python      runs, in the order of the file
    ```text                  not code: printed output, a layout, a synopsis with placeholders
    <!-- skip: REASON -->    on the line above a block: never run (REASON: why it cannot run anywhere here)
    <!-- real: REASON -->    on the line above a real-size block (REASON: what it needs); right after the
                             block comes its demo-size twin, which runs in its place:
    <!-- twin
    ```bash
    ...
    ```
    -->
    <!-- check: REASON -->   on the line above a block that could run here but costs too much for CI
                             (REASON: what it costs); it is checked like a real block, not run

The `python -m shallow_pi_jax.<command> ...` and `python tools/<script>.py ...` lines of real and check
blocks are checked against the command's own argument parser (module exists, every flag exists, values
parse; the trainer's --config file loads and its --config.x overrides exist), without running them.

A block without a language, or with another one, is an error, so no new block escapes unnoticed.

Where blocks run: one sandbox directory for all files, holding links to the repository's READ_ONLY
folders (so `experiments/l6.py`, `shallow_pi_jax/assets/...` resolve) and receiving what the blocks
write (`runs/`, `export/`, ...); `/tmp/` in a block means the sandbox's `tmp/`. The venv's python is
first on PATH. Files run in FILES order and share the sandbox, so a later block (or file) uses what an
earlier one wrote, as a reader following the docs would; running one file's test runs those before it.
"""
import dataclasses
import json
import os
import pathlib
import re
import shlex
import signal
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

REPO = pathlib.Path(__file__).resolve().parents[1]
FILES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
RUN_LANGS = ("bash", "python")
LANGS = (*RUN_LANGS, "text")
BLOCK_TIMEOUT_S = 900
# What blocks read from the repository (linked into the sandbox). Nothing else is linked, so what a
# block writes (runs/, export/, assets/, ...) lands in the sandbox, never in the checkout.
READ_ONLY = ("experiments", "shallow_pi_jax", "tests", "tools")

FENCE = re.compile(r"^```(.*)$")
DIRECTIVE = re.compile(r"^<!--\s*(skip|real|check):\s*(.*?)\s*-->$")


@dataclasses.dataclass
class Block:
    file: str
    line: int           # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None = None      # reason
    real: str | None = None      # what it needs; then `twin` is set
    check: str | None = None     # what running it would cost
    twin: "Block | None" = None

    def where(self) -> str:
        return f"{self.file}:{self.line}"


def parse(file: str) -> tuple[list[Block], list[str]]:
    """The top-level blocks of a Markdown file (twins attached to their real block), and the
    convention's violations."""
    lines = (REPO / file).read_text().splitlines()
    blocks, errors = [], []
    i, pending, in_twin = 0, None, None
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if line.strip() == "<!-- twin":
            if not blocks or blocks[-1].real is None or blocks[-1].twin is not None:
                errors.append(f"{file}:{i + 1}: a twin must directly follow a <!-- real: ... --> block")
            in_twin = i + 1
        elif in_twin is not None and line.strip() == "-->":
            if blocks and blocks[-1].real is not None and blocks[-1].twin is None:
                errors.append(f"{file}:{in_twin}: the twin comment holds no block")
            in_twin = None
        elif m:
            lang = m.group(1).strip().split(" ")[0] if m.group(1).strip() else ""
            start = i
            i += 1
            body = []
            while i < len(lines) and not FENCE.match(lines[i]):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                errors.append(f"{file}:{start + 1}: unclosed code block")
            block = Block(file, start + 1, lang, "\n".join(body) + "\n")
            if lang not in LANGS:
                errors.append(f"{block.where()}: code block language {lang!r}; expected one of {', '.join(LANGS)}")
            if in_twin is not None:
                real = blocks[-1] if blocks else None
                if real is None or real.real is None or real.twin is not None:
                    errors.append(f"{block.where()}: twin block without a real block right before it")
                elif lang not in RUN_LANGS:
                    errors.append(f"{block.where()}: a twin must be bash or python, got {lang!r}")
                else:
                    real.twin = block
            else:
                if blocks and blocks[-1].real is not None and blocks[-1].twin is None:
                    errors.append(f"{blocks[-1].where()}: real block without a <!-- twin ... --> right after it")
                if pending is not None:
                    kind, reason, at = pending
                    if at != start - 1:
                        errors.append(f"{file}:{at + 1}: <!-- {kind}: --> must be on the line right above a block")
                    elif not reason:
                        errors.append(f"{block.where()}: <!-- {kind}: --> needs a reason")
                    elif lang == "text":
                        errors.append(f"{block.where()}: a text block is never run; drop <!-- {kind}: -->")
                    else:
                        setattr(block, kind, reason)
                    pending = None
                blocks.append(block)
        else:
            d = DIRECTIVE.match(line.strip())
            if d:
                pending = (d.group(1), d.group(2), i)
            elif line.strip().startswith("<!--") and re.match(r"<!--\s*(skip|real|check|twin)\b", line.strip()):
                errors.append(f"{file}:{i + 1}: malformed directive {line.strip()!r}")
        i += 1
    if in_twin is not None:
        errors.append(f"{file}:{in_twin}: unclosed <!-- twin")
    if pending is not None:
        errors.append(f"{file}:{pending[2] + 1}: <!-- {pending[0]}: --> is not followed by a block")
    if blocks and blocks[-1].real is not None and blocks[-1].twin is None:
        errors.append(f"{blocks[-1].where()}: real block without a <!-- twin ... --> right after it")
    return blocks, errors


def runnable(blocks: list[Block]) -> list[Block]:
    """What runs, in order: plain bash/python blocks, and the twins of real blocks."""
    out = []
    for b in blocks:
        if b.real is not None:
            if b.twin is not None:
                out.append(b.twin)
        elif b.lang in RUN_LANGS and b.skip is None and b.check is None:
            out.append(b)
    return out


def commands(block: Block) -> list[list[str]]:
    """The argv of each `python -m shallow_pi_jax.X ...` / `python tools/X.py ...` command of a bash block."""
    if block.lang != "bash":
        return []
    out = []
    for logical in block.code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(logical, posix=True, punctuation_chars=True)  # "x;" and "a&&b" split as bash does
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError:  # an unbalanced quote inside a multi-line shell string (gcloud --command="...")
            continue
        segment = []
        for w in [*words, ";"]:
            if w in ("&&", "||", ";", "&", "|"):
                if len(segment) >= 2 and segment[0] == "python" and (
                        segment[1:3] and segment[1] == "-m" and segment[2].startswith("shallow_pi_jax")
                        or segment[1].startswith("tools/") and segment[1].endswith(".py")):
                    out.append(segment[1:])
                segment = []
            else:
                segment.append(w)
    return out


# Runs in a fresh interpreter: each command's module as __main__, stopped right after its arguments
# parsed. One process for all commands (imports are shared); absl's flags are global, so the trainer's
# module runs once and later trainer commands only re-parse.
CHECKER = r"""
import argparse, json, runpy, sys, traceback

class Parsed(BaseException):
    pass

real_parse_args = argparse.ArgumentParser.parse_args
real_parse_known_args = argparse.ArgumentParser.parse_known_args
inside = []

def parse_args(self, args=None, namespace=None):
    inside.append(1)
    try:
        real_parse_args(self, args, namespace)  # unknown flags exit 2 here
    finally:
        inside.pop()
    raise Parsed

def parse_known_args(self, args=None, namespace=None):
    result = real_parse_known_args(self, args, namespace)
    if inside:
        return result
    raise Parsed  # a command that takes the rest itself (ablation's --x=y overrides)

argparse.ArgumentParser.parse_args = parse_args
argparse.ArgumentParser.parse_known_args = parse_known_args
from absl import app, flags

def absl_run(main, argv=None, **kwargs):
    flags.FLAGS(sys.argv)
    raise Parsed

app.run = absl_run
loaded, results = set(), []
for argv in json.load(sys.stdin):
    sys.argv = [argv[1] if argv[0] == "-m" else argv[0], *argv[2 if argv[0] == "-m" else 1:]]
    try:
        if argv[0] == "-m" and argv[1] in loaded and argv[1].endswith(".train"):
            flags.FLAGS.unparse_flags()
            absl_run(None)
        elif argv[0] == "-m":
            loaded.add(argv[1])
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(argv[0], run_name="__main__")
        results.append("ran to the end without parsing arguments")
    except Parsed:
        results.append(None)
    except SystemExit as e:
        results.append(f"exit {e.code}")
    except BaseException:
        results.append(traceback.format_exc(limit=3))
print("CHECKED " + json.dumps(results))
"""


def check_commands(argvs: list[list[str]], root: pathlib.Path) -> list[str | None]:
    """For each argv, None if the command's parser accepts it, else what went wrong."""
    argvs = [[re.sub(r"^/tmp/", f"{root}/tmp/", a) for a in argv] for argv in argvs]  # as run_block does
    out = subprocess.run([sys.executable, "-c", CHECKER], input=json.dumps(argvs), cwd=root, env=block_env(),
                         capture_output=True, text=True, timeout=600)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("CHECKED ")]
    assert line, f"the argument checker failed:\n{out.stderr[-3000:]}"
    results = json.loads(line[-1][len("CHECKED "):])
    return [r if r is None else f"{r}\n{out.stderr[-1500:]}" for r in results]


def test_every_block_is_run_twinned_or_skipped():
    counts = {"run": 0, "real+twin": 0, "skip": 0, "text": 0}
    problems = []
    for file in FILES:
        blocks, errors = parse(file)
        problems += errors
        for b in blocks:
            kind = ("real+twin" if b.real is not None else "skip" if b.skip is not None
                    else "text" if b.lang == "text" else "run")
            counts[kind] += 1
    assert not problems, "docs code-block convention (see tests/test_docs.py):\n" + "\n".join(problems)
    assert counts["run"] + counts["real+twin"] > 0, counts


def test_the_convention_catches_what_it_must(tmp_path, monkeypatch):
    """An unmarked block, a real block without twin, a reasonless skip: each is reported."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "x.md").write_text("\n".join([
        "```", "ls", "```",                                   # no language
        "<!-- skip: -->", "```bash", "gcloud", "```",          # no reason
        "<!-- real: a GPU -->", "```bash", "big", "```",        # no twin
        "<!-- real: a GPU -->", "```bash", "big", "```", "<!-- twin", "```bash", "small", "```", "-->",
        "<!-- skip: no TensorRT here -->", "```bash", "trtexec", "```",
    ]) + "\n")
    blocks, errors = parse("x.md")
    assert len(errors) == 3, errors
    assert "language ''" in errors[0] and "needs a reason" in errors[1] and "without a <!-- twin" in errors[2]
    assert [b.code for b in runnable(blocks)] == ["gcloud\n", "small\n"]  # a reasonless skip is not honoured
    assert blocks[-1].skip == "no TensorRT here"


# ------------------------------------------------------------------------------------------- running

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    for name in READ_ONLY:
        (root / name).symlink_to(REPO / name)
    (root / "tmp").mkdir()
    return {"root": root, "done": {}, "output": {}}


def block_env() -> dict:
    return {**os.environ, "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def run_block(block: Block, root: pathlib.Path, sessions: list[int]) -> tuple[int, str, float]:
    """Run one block in the sandbox; its exit status, output and wall time. What it leaves running in
    the background (a server started with &) keeps running for the file's later blocks; its session id
    is appended to `sessions`."""
    code = re.sub(r"(?<![\w./])/tmp/", f"{root}/tmp/", block.code)
    name = f".block_{block.file.replace('/', '_')}_{block.line}"
    if block.lang == "python":
        (root / f"{name}.py").write_text(code)
        argv = [sys.executable, str(root / f"{name}.py")]
    else:
        argv = ["bash", "-e", "-o", "pipefail", "-c", code]
    log = root / f"{name}.log"
    start = time.monotonic()
    # Output to a file, not a pipe: a background server would hold a pipe open after the block ends.
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, cwd=root, env=block_env(), stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        sessions.append(proc.pid)
        try:
            rc = proc.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    return rc, log.read_text(errors="replace"), time.monotonic() - start


def end_sessions(sessions: list[int]) -> None:
    for sid in sessions:
        try:
            os.killpg(sid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    sessions.clear()


def run_file(file: str, sandbox) -> list[str]:
    """Run `file`'s blocks once (memoised per sandbox); the failures, each with its output tail."""
    if file not in sandbox["done"]:
        failures, sessions = [], []
        try:
            for block in runnable(parse(file)[0]):
                rc, out, seconds = run_block(block, sandbox["root"], sessions)
                sandbox["output"][block.where()] = out
                print(f"{block.where()} ({block.lang}): exit {rc} in {seconds:.1f} s")
                if rc != 0:
                    failures.append(f"{block.where()} exited {rc}:\n{block.code}\n--- output (tail) ---\n"
                                    f"{out[-4000:]}")
                    break  # later blocks build on this one
        finally:
            end_sessions(sessions)
        sandbox["done"][file] = failures
    return sandbox["done"][file]


@pytest.mark.slow
@pytest.mark.torch
@pytest.mark.parametrize("file", FILES)
def test_documented_blocks_run(file, sandbox):
    for earlier in FILES[:FILES.index(file)]:
        run_file(earlier, sandbox)
    failures = run_file(file, sandbox)
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_real_and_check_blocks_parse(sandbox):
    """The real-size commands themselves (not only their twins) still name existing commands and flags."""
    todo = [(b, argv) for f in FILES for b in parse(f)[0] if b.real is not None or b.check is not None
            for argv in commands(b)]
    assert todo
    results = check_commands([a for _, a in todo], sandbox["root"])
    bad = [f"{b.where()}: python {' '.join(a)}\n  {r}" for (b, a), r in zip(todo, results) if r is not None]
    assert not bad, "\n".join(bad)


def test_commands_are_found_across_continuations_chains_and_comments():
    code = ("python -m shallow_pi_jax.train --config a.py \\\n    --workdir 'w d'   # trailing comment\n"
            "# python -m shallow_pi_jax.commented_out\n"
            "cd x && python tools/libero_client.py --suite demo & curl -sf localhost:1/healthz\n"
            "pip install -e .[tpu]; python -m shallow_pi_jax.serve --port 8000\n")
    assert commands(Block("x.md", 1, "bash", code)) == [
        ["-m", "shallow_pi_jax.train", "--config", "a.py", "--workdir", "w d"],
        ["tools/libero_client.py", "--suite", "demo"],
        ["-m", "shallow_pi_jax.serve", "--port", "8000"]]
    assert commands(Block("x.md", 1, "python", "import os\n")) == []

# ------------------------------------------------------------------------ the README's pipeline, chained
#
# The README's pipeline at demo size, each command fed exactly the path the one before printed, starting
# from the student the README's own main job wrote above (the chain is run once, not twice):
# main job → make_student → export_torch → export_onnx → onnxruntime == JAX student → serve + openpi_client
# (one request, then closed loop on the simulator) → evaluate → bench_inference. Nothing is hand-made.

PIPELINE_TRIALS = 3  # closed-loop episodes on the simulator
PARITY_TOL = 1e-5    # float32, relative to max(1, max |reference|)


def command(*args, timeout=600) -> str:
    """Run `python -m shallow_pi_jax.<args>` (or a script path) from the repository root; its stdout."""
    argv = [sys.executable, *args] if args[0].endswith(".py") else [sys.executable, "-m", *args]
    out = subprocess.run(argv, cwd=REPO, env=block_env(), capture_output=True, text=True, timeout=timeout)
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


@pytest.mark.slow
@pytest.mark.torch
def test_readme_pipeline_on_its_own_outputs(sandbox, tmp_path):
    # 1. the main job, as the README runs it (its twin: 2 steps): where it says it wrote the student
    assert not run_file("README.md", sandbox), "README.md's blocks failed: see test_documented_blocks_run[README.md]"
    readme = "".join(out for where, out in sandbox["output"].items() if where.startswith("README.md:"))
    trained = printed(readme, r"^student written to (\S+) \(params/")

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
            cwd=REPO, env=block_env(), stdout=f, stderr=subprocess.STDOUT)
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

        out = command("tools/libero_client.py", "--suite", "demo", "--port", str(port), "--trials",
                      str(PIPELINE_TRIALS), "--out", str(tmp_path / "closed_loop.json"))
        summary = json.loads((tmp_path / "closed_loop.json").read_text())
        rate = float(printed(out, r"^demo: success rate ([\d.]+) % "))
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert summary["trials"] == PIPELINE_TRIALS and summary["success_rate"] == pytest.approx(rate / 100, abs=1e-3)
    # The same episodes run in this process with the same (fixed) noise succeed exactly as the served ones:
    # the client loop (tools/libero_client.py's seeds, env seed 7, replanning every 5) adds nothing of its own.
    local_env = ReachEnv(seed=7)
    local_wins = sum(rollout(local_env, lambda o: policy.infer(raw_observation(o))["actions"], seed=10_000 + t,
                             replan_every=5)["success"] for t in range(PIPELINE_TRIALS))
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
