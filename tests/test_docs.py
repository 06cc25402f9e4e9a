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
import subprocess
import sys
import time

import pytest

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
    return {"root": root, "done": {}}


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
