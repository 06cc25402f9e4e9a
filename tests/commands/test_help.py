"""Every command answers --help at once: exit 0, its help on stdout, and neither TensorFlow, JAX nor
PyTorch imported (each command imports its library only once its flags are parsed). Every command
module is a console script of setup.py."""
import ast
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "jax", "torch", "libtpu")

# One process for all of them: the heavy libraries would take seconds each; the commands none.
DRIVER = r"""
import contextlib, importlib, io, json, sys
result = {}
for module in sys.argv[1:]:
    sys.argv = [module, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            importlib.import_module(f"shallow_pi_jax.{module}").console()
        code = "returned"
    except SystemExit as e:
        code = e.code
    result[module] = {"code": code, "help": out.getvalue()}
heavy = [m for m in %r if m in sys.modules]
print(json.dumps({"result": result, "heavy": heavy}))
"""


def _commands() -> dict:
    tree = ast.parse((ROOT / "setup.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "COMMANDS")
    return ast.literal_eval(node.value)


def test_every_command_module_is_a_console_script():
    modules = set(_commands().values())
    package = ROOT / "shallow_pi_jax"
    found = {p.stem for p in package.glob("*.py") if "\ndef console()" in p.read_text()}
    found |= {f"{p.parent.name}.__main__" for p in package.glob("*/__main__.py")}
    assert found == modules


def test_help_answers_without_heavy_imports():
    modules = list(_commands().values())
    r = subprocess.run([sys.executable, "-c", DRIVER % (HEAVY,), *modules], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    for module, res in out["result"].items():
        assert res["code"] == 0, (module, res)
        assert "--verbose" in res["help"], module  # the flags are listed
    assert out["heavy"] == []
    assert "experiments/pi05_libero.py" in out["result"]["train"]["help"]  # the current real recipe
