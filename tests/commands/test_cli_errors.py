"""Every command-line tool fails the same way on bad input: `error: …` naming the path or flag as the
last line of stderr, a non-zero exit, no traceback, nothing written. And every tool that reads a
policy takes each directory form the project writes (run, student dir, its params/, openpi's).

The bad-input cases run each command exactly as `python -m` does (runpy, run_name="__main__", so
the module's own `sys.exit(cli.run(main))` line is what is tested), all in one child process: 16
fresh interpreters would spend minutes importing jax, torch and TensorFlow on a 2-core machine. A
few cases, and train / serve (other modules, converting to cli.run separately), run as real
subprocesses.
"""
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from shallow_pi_jax import cli, export_onnx, export_torch
from shallow_pi_jax.checkpoint import policy_dir
from shallow_pi_jax.eval import open_loop
from shallow_pi_jax.export import policy_onnx, torch_model
from shallow_pi_jax.serve.policy import load_checkpoint
from shallow_pi_jax.serve.presets import get_preset
from shallow_pi_jax.serve.testing import tiny_config, write_tiny_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]

# One child process runs every case: argv, captured stdout/stderr, exit status -> a JSON file.
DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback
cases, results_path = json.load(open(sys.argv[1])), sys.argv[2]
results = {}
for name, (module, argv) in cases.items():
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [module] + argv
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            code = 0  # returned without sys.exit: the module does not end with sys.exit(cli.run(main))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=sys.stderr)  # what the interpreter would print
        except BaseException:
            traceback.print_exc()  # escaped cli.run: exactly what the user would see
            code = 1
    results[name] = {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
    json.dump(results, open(results_path, "w"))
"""


def assert_one_line_error(code, stderr, names, leftovers=()):
    assert code != 0, stderr
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    assert last.startswith("error: "), stderr[-2000:]
    for name in names:
        assert str(name) in last, f"{name!r} not named in {last!r}"
    for path in leftovers:
        assert not pathlib.Path(path).exists(), f"{path} left behind"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "empty").mkdir()
    return {"tmp": tmp, "missing": tmp / "missing", "empty": tmp / "empty"}


@pytest.fixture(scope="module")
def policy_forms(tmp_path_factory):
    """The four forms of one tiny policy: run dir, student dir, its params/, and an openpi-style
    checkpoint (params/ + assets/<asset_id>/norm_stats.json, no model_config.json)."""
    tmp = tmp_path_factory.mktemp("forms")
    cfg = tiny_config(depth=2, action_horizon=4)  # 3 cameras: what an openpi tree implies
    run = tmp / "run"
    student = write_tiny_checkpoint(run / "student", cfg, seed=0, state_dim=2, robot_action_dim=2,
                                    layer_map={"teacher_depth": 4, "student_depth": 2, "indices": [0, 3],
                                               "strategy": "explicit"}, tokenizer=False)
    (run / "checkpoints").mkdir()
    (run / "config.json").write_text("{}")
    openpi = tmp / "openpi"
    shutil.copytree(student / "params", openpi / "params")
    (openpi / "assets" / "physical-intelligence" / "demo").mkdir(parents=True)
    shutil.copy(student / "assets" / "norm_stats.json", openpi / "assets" / "physical-intelligence" / "demo")
    return {"cfg": cfg, "run": run, "student": student, "params": student / "params", "openpi": openpi}


def bad_cases(d, forms):
    """name -> (module, argv, what the error line must name, paths that must not appear)."""
    m, e, t = d["missing"], d["empty"], d["tmp"]
    bad_map = t / "bad_map"
    if not bad_map.exists():  # a student whose layer_map.json disagrees with its params (2 layers)
        shutil.copytree(forms["student"], bad_map)
        (bad_map / "layer_map.json").write_text(json.dumps({"teacher_depth": 18, "indices": [0, 9, 17]}))
        policy_dir.write_checksums(bad_map)  # sealed as written: the record itself is inconsistent
    return {
        "make_student": ("shallow_pi_jax.make_student", ["--teacher", e, "--depth", "2", "--out", t / "o1"],
                         [e], [t / "o1"]),
        "export_torch": ("shallow_pi_jax.export_torch", ["--params", m, "--out", t / "o2"], [m], [t / "o2"]),
        "export_torch_bad_layer_map": ("shallow_pi_jax.export_torch", ["--checkpoint", bad_map, "--out", t / "o2b"],
                                       [bad_map / "layer_map.json", "3 indices"], [t / "o2b"]),
        "export_onnx": ("shallow_pi_jax.export_onnx", ["--torch", e, "--out", t / "o3" / "m.onnx"], [e], [t / "o3"]),
        "export_checkpoint": ("shallow_pi_jax.export_checkpoint", ["--workdir", e, "--out", t / "o4"],
                              ["--workdir", e], [t / "o4"]),
        "evaluate": ("shallow_pi_jax.evaluate", ["--checkpoint", m, "--out", t / "o5"], [m], [t / "o5"]),
        "layer_similarity": ("shallow_pi_jax.layer_similarity",
                             ["--checkpoint", forms["student"], "--times", "0.5,x", "--out", t / "o6"],
                             ["--times", "0.5,x"], [t / "o6"]),
        "openpi_parity": ("shallow_pi_jax.openpi_parity", [e, "--save-outputs", t / "o7.npz"],
                          [e / "config.json"], [t / "o7.npz"]),
        "compute_norm_stats": ("shallow_pi_jax.compute_norm_stats",
                               ["--data-dir", t, "--dataset", "x", "--mapping", m / "map.json", "--out",
                                t / "o8.json"], ["--mapping", m / "map.json"], [t / "o8.json"]),
        "make_demo_dataset": ("shallow_pi_jax.make_demo_dataset",
                              ["--data-dir", t / "o9", "--num-episodes", "0"], ["num_episodes", "0"], [t / "o9"]),
        "aot_compile": ("shallow_pi_jax.aot_compile", ["--config", m / "x.py", "--json", t / "o10.json"],
                        [m / "x.py"], [t / "o10.json"]),
        "bench_inference": ("shallow_pi_jax.bench_inference", ["--checkpoint", e, "--out", t / "o11.json"],
                            [e], [t / "o11.json"]),
        "bench_train": ("shallow_pi_jax.bench_train", ["--skip-timing", "--devices", "999", "--json", t / "o12.json"],
                        ["--devices", "999"], [t / "o12.json"]),
        "bench_export": ("shallow_pi_jax.bench_export", ["--layers", "0,3,99", "--no-onnx"], ["99"], []),
        "bench_data": ("shallow_pi_jax.bench_data", ["--data-dir", m, "--dataset", "x", "--norm-stats", m,
                                                     "--tokenizer", m], ["--data-dir", m], []),
        "ablation": ("shallow_pi_jax.ablation", ["--out", t / "o13", "--teacher", m], [m], [t / "o13"]),
        "launch": ("shallow_pi_jax.launch", ["--processes", "0", "--", "--workdir", t / "o14"], ["--processes", "0"],
                   [t / "o14"]),
    }


@pytest.fixture(scope="module")
def results(dirs, policy_forms):
    cases = {k: (mod, [str(a) for a in argv]) for k, (mod, argv, _, _) in bad_cases(dirs, policy_forms).items()}
    (dirs["tmp"] / "cases.json").write_text(json.dumps(cases))
    res = subprocess.run([sys.executable, "-c", DRIVER, str(dirs["tmp"] / "cases.json"),
                          str(dirs["tmp"] / "results.json")], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((dirs["tmp"] / "results.json").read_text())


CASES = ["make_student", "export_torch", "export_torch_bad_layer_map", "export_onnx", "export_checkpoint", "evaluate",
         "layer_similarity", "openpi_parity", "compute_norm_stats", "make_demo_dataset", "aot_compile",
         "bench_inference", "bench_train", "bench_export", "bench_data", "ablation", "launch"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_error(name, results, dirs, policy_forms):
    _, _, names, leftovers = bad_cases(dirs, policy_forms)[name]
    r = results[name]
    assert_one_line_error(r["code"], r["stderr"], names, leftovers)


def test_every_command_is_covered():
    library = {"__init__", "cli", "demo", "fileio", "run_dir", "trees", "verbosity"}  # at the root, no commands
    commands = {p.stem for p in (ROOT / "shallow_pi_jax").glob("*.py")} - library - {"train"}
    assert commands | {"ablation"} == {c.split("_bad")[0] for c in CASES} | {"ablation"}


def _subprocess(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_real_process_and_verbose_traceback(dirs):
    """A real interpreter: exit status 1 and the one line; --verbose adds the traceback above it."""
    out = dirs["tmp"] / "v"
    r = _subprocess("shallow_pi_jax.export_torch", "--params", dirs["empty"], "--out", out)
    assert_one_line_error(r.returncode, r.stderr, [dirs["empty"]], [out])
    assert r.returncode == 1
    r = _subprocess("shallow_pi_jax.export_torch", "--params", dirs["empty"], "--out", out, "--verbose")
    assert r.returncode == 1 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: params_dir:") and not out.exists()


@pytest.mark.slow
def test_train_bad_config(dirs):
    """Converted to cli.run by train.py's owner; fails until that lands."""
    out = dirs["tmp"] / "train_run"
    r = _subprocess("shallow_pi_jax.train", "--config", "experiments/l6.py:depth=0x", "--workdir", out)
    assert_one_line_error(r.returncode, r.stderr, ["depth"], [out])


@pytest.mark.slow
def test_serve_missing_checkpoint(dirs):
    """Converted to cli.run by serve's owner; fails until that lands."""
    r = _subprocess("shallow_pi_jax.serve", "--checkpoint", dirs["missing"], "--env", "demo", "--port", "0")
    assert_one_line_error(r.returncode, r.stderr, [dirs["missing"]])


def test_cli_run_statuses(capsys):
    def fails(exc):
        def main(argv):
            raise exc
        return main

    assert cli.run(lambda argv: pathlib.Path("x"), []) == 0  # what a main returns for Python callers
    assert cli.run(fails(cli.UsageError("--n: expected >= 1, got 0")), []) == 2
    assert cli.run(fails(ValueError("a:\n  1 missing: x\n  2 unexpected: y")), []) == 1
    assert capsys.readouterr().err.splitlines() == ["error: --n: expected >= 1, got 0",
                                                    "error: a:; 1 missing: x; 2 unexpected: y"]
    assert cli.run(fails(AssertionError("bug")), []) == 1
    assert capsys.readouterr().err == "error: AssertionError: bug\n"


# ----------------------------------------------------------------------------- any policy directory

FORMS = ("run", "student", "params", "openpi")


@pytest.mark.slow
def test_policy_path_resolves_a_run_only(policy_forms, dirs):
    assert cli.policy_path(policy_forms["run"]) == policy_forms["student"]
    for form in ("student", "params", "openpi"):
        assert cli.policy_path(policy_forms[form]) == policy_forms[form]
    assert cli.policy_path(dirs["missing"]) == dirs["missing"]  # policy_dir.read names it
    training = dirs["tmp"] / "training"
    (training / "checkpoints").mkdir(parents=True)
    (training / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="training run without student/.*export_checkpoint"):
        cli.policy_path(training)


@pytest.mark.slow
@pytest.mark.torch
def test_export_torch_and_onnx_take_every_form(policy_forms, tmp_path):
    """The same safetensors from every form; export_onnx converts any form in memory to the same model."""
    cfg = policy_forms["cfg"]
    # An openpi checkpoint records no horizon or prompt length: the flags give them.
    flags = {"openpi": ["--action-horizon", "4", "--max-token-len", str(cfg.max_token_len)]}
    blobs = {}
    for form in FORMS:
        out = tmp_path / form
        export_torch.main(["--params", str(policy_forms[form]), "--out", str(out), *flags.get(form, [])])
        blobs[form] = (out / "model.safetensors").read_bytes()
        conf = json.loads((out / "config.json").read_text())
        assert torch_model.ModelConfig.from_dict(conf["model"]) == cfg
        assert (conf["layer_map"] or {}).get("indices") == (None if form == "openpi" else [0, 3])
        norm = "assets/norm_stats.json" if form != "openpi" else "assets/physical-intelligence/demo/norm_stats.json"
        assert (out / norm).is_file()
    assert all(b == blobs["run"] for b in blobs.values())
    ref = torch_model.load_pretrained(tmp_path / "run").state_dict()
    for form in FORMS:
        args = export_onnx.parse_args(["--checkpoint", str(policy_forms[form]), "--out", "x.onnx",
                                       *flags.get(form, [])])
        sd = policy_onnx.load_model(args.source, args.action_horizon, args.max_token_len).state_dict()
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref), form
    # A PyTorch export given where a policy is expected is the PyTorch export.
    assert policy_onnx.load_model(tmp_path / "run").config == cfg

    # The openpi form without a horizon: one line naming the flag, nothing written.
    assert cli.run(export_torch.main, ["--params", str(policy_forms["openpi"]), "--out", str(tmp_path / "x")]) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_evaluate_loads_every_form(policy_forms):
    """evaluate's loading of --checkpoint and --teacher: the same model and weights from every form."""
    preset = get_preset("demo")
    ref = load_checkpoint(policy_forms["student"], preset=preset)
    for form in FORMS:
        path = cli.policy_path(policy_forms[form])
        ckpt = load_checkpoint(path, preset=preset) if form != "openpi" else None
        teacher = open_loop.load_teacher(policy_forms[form], ref, preset)
        for c in filter(None, (ckpt, teacher)):
            assert c.config == ref.config, form
            flat = policy_dir.openpi_params.flatten_params(c.params)
            want = policy_dir.openpi_params.flatten_params(ref.params)
            assert all(np.array_equal(flat[k], want[k]) for k in want), form
            assert c.norm_stats is not None and c.norm_stats.read_text() == ref.norm_stats.read_text(), form
