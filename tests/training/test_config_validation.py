"""Config validation before anything runs (`config.<key>: expected ..., got ...`), every documented
`--config.x=` override parses as train.py parses it (lists of datasets included), and flag errors are one line."""
import ast
import json
import pathlib
import re
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from shallow_pi_jax.data import norm_stats as ns
from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training import recipes
from shallow_pi_jax.training.flag_errors import flag_error

REPO = pathlib.Path(__file__).parents[2]
L6 = str(REPO / "experiments" / "l6.py")
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# --config.key=value as the docs write it; a quoted value is taken whole. Placeholders are left out.
OVERRIDE = re.compile(r"--config\.([\w.]+)=('[^']*'|[^\s`\"\\)]+)")
PLACEHOLDERS = {"x", "x.y"}


def documented_overrides():
    found = {}
    for doc in DOCS:
        for key, value in OVERRIDE.findall(doc.read_text()):
            if key in PLACEHOLDERS or value in ("...", "value", "y"):
                continue
            for v in value.split("|"):  # `--config.distributed=on|off`: either
                found[f"--config.{key}={v.strip(chr(39))}"] = None
    return list(found)


def parse(*args, spec=L6):
    """train.py's flags: DEFINE_config_file('config', lock_config=False), parsed from a command line."""
    argv = ["train", f"--config={spec}", *args]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=False, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    fv(argv)
    return fv.config


def demo(**changes):
    c = recipes.load(f"{L6}:size=demo")
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def test_the_docs_have_the_overrides_this_module_checks():
    found = documented_overrides()
    assert any(o.startswith("--config.data.datasets=[") for o in found), found
    assert {"--config.batch_size=32", "--config.wandb.enabled=True", "--config.distributed=on"} <= set(found)


@pytest.mark.parametrize("override", documented_overrides())
def test_every_documented_override_parses(override):
    key, value = override[len("--config."):].split("=", 1)
    got = parse(override)
    for part in key.split("."):
        got = got[part]
    if key == "data.datasets":
        assert got == tuple(json.loads(value))
    elif isinstance(got, bool):
        assert got == (value == "True")
    elif isinstance(got, tuple):  # a Python literal, as documented: '(True,True,False)'
        assert got == ast.literal_eval(value)
    else:
        assert str(got) == value


@pytest.mark.parametrize("override, key, want", [
    ('--config.data.datasets=[{"name": "a", "data_dir": "/d", "mapping": "droid"}, {"name": "b", "weight": 0.5}]',
     "data.datasets", ({"name": "a", "data_dir": "/d", "mapping": "droid"}, {"name": "b", "weight": 0.5})),
    ("--config.data.norm_stats_path=/n/norm_stats.json", "data.norm_stats_path", "/n/norm_stats.json"),  # None default
    ("--config.data.delta_action_mask=(True,True,False)", "data.delta_action_mask", (True, True, False)),
    ("--config.data.default_prompt=pick it up", "data.default_prompt", "pick it up"),
    ("--config.data.use_quantile_norm=False", "data.use_quantile_norm", False),
    ("--config.data.process_index=1", "data.process_index", 1),
    ("--config.data.cameras=('base_0_rgb',)", "data.cameras", ("base_0_rgb",)),
    ("--config.optim.ema_decay=0.999", "optim.ema_decay", 0.999),
    ("--config.student.layer_map=0,3,7,10,14,17", "student.layer_map", "0,3,7,10,14,17"),
])
def test_list_and_none_default_fields_can_be_overridden(override, key, want):
    got = parse(override)
    for part in key.split("."):
        got = got[part]
    assert got == want


def test_every_leaf_of_every_experiment_can_be_overridden():
    """ml_collections refuses an override of a list or an untyped None field; none may remain."""
    supported = (int, float, bool, str, tuple)
    for spec in ("l6.py", "l6.py:size=demo", "l6.py:size=tiny", "teacher.py:size=demo"):
        c = recipes.load(str(REPO / "experiments" / spec))

        def walk(node, path):
            for key in node.keys():
                if isinstance(node[key], ml_collections.ConfigDict):
                    walk(node[key], f"{path}.{key}")
                else:
                    assert node.get_type(key) in supported, (spec, f"{path}.{key}", node.get_type(key))

        walk(c, "config")


def test_readme_real_job_command_parses_and_validates(tmp_path):
    """The README's real run (its --config file and overrides), with its paths made to exist here."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The real job"):]
    section = section[:section.index("\n## ")]
    command = section[section.index("python -m shallow_pi_jax.train"):].split("\n# ")[0]
    spec = re.search(r"--config (\S+)", command).group(1)
    assert spec == "experiments/pi05_libero.py"
    overrides = [f"--config.{k}={v.strip(chr(39))}".replace("=/", f"={tmp_path}/")
                 for k, v in OVERRIDE.findall(command)]
    c = parse(*overrides, spec=str(REPO / spec))
    pathlib.Path(c.teacher.params).mkdir(parents=True)
    for value in (c.data.norm_stats_path, c.data.tokenizer_path):
        pathlib.Path(value).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(value).write_bytes(b"")
    run_plan.resolve(c)
    assert [d["name"] for d in c.data.datasets] == [f"libero_{s}_no_noops" for s in ("spatial", "object", "goal", "10")]
    assert c.teacher.preset == "pi05_libero" and c.data.discrete_state_input is False


def test_experiment_configs_are_valid():
    for spec in ("l4.py:size=demo", "l6.py:size=demo", "l6.py:size=tiny", "l9.py:size=demo,model=pi0,loss=kd",
                 "l6.py:size=demo,init=scratch", "l6.py:size=demo,layer_map=last", "teacher.py:size=demo"):
        run_plan.resolve(recipes.load(str(REPO / "experiments" / spec)))


@pytest.mark.parametrize("changes, match", [
    ({"num_steps": 0}, r"config\.num_steps: expected an int >= 1, got 0"),
    ({"num_steps": -5}, r"config\.num_steps: expected an int >= 1, got -5"),
    ({"batch_size": 0}, r"config\.batch_size: expected an int >= 1, got 0"),
    ({"checkpoint_every": 0}, r"config\.checkpoint_every: expected an int >= 1, got 0"),
    ({"log_every": 0}, r"config\.log_every: expected an int >= 1, got 0"),
    ({"keep_checkpoints": 0}, r"config\.keep_checkpoints: expected an int >= 1, got 0"),
    ({"optim.peak_lr": 0.0}, r"config\.optim\.peak_lr: expected a learning rate > 0, got 0\.0"),
    ({"optim.peak_lr": -1e-4}, r"config\.optim\.peak_lr: expected a learning rate > 0, got -0\.0001"),
    ({"optim.peak_lr": float("nan")}, r"config\.optim\.peak_lr: expected a learning rate > 0, got nan"),
    ({"optim.b2": 1.0}, r"config\.optim\.b2: expected a number in \[0, 1\), got 1\.0"),
    ({"optim.ema_decay": 1.5}, r"config\.optim\.ema_decay: expected None or a number in \[0, 1\), got 1\.5"),
    ({"student.depth": 19}, r"config\.student\.depth: expected an int in \[1, 18\] .*, got 19"),
    ({"student.depth": 0}, r"config\.student\.depth: expected an int in \[1, 18\] .*, got 0"),
    ({"student.layer_map": "0,3,7"}, r"config\.student\.layer_map: expected 6 teacher layer indices .*got '0,3,7'"),
    ({"student.layer_map": "0,3,3,7,8,9"}, r"config\.student\.layer_map: expected uniform, first, last or teacher "
                                           r"layer indices.*got '0,3,3,7,8,9'"),
    ({"student.init": "random"}, r"config\.student\.init: expected teacher or scratch, got 'random'"),
    ({"teacher.params": ""}, r"config\.teacher\.params: expected a teacher params directory.*got ''"),
    ({"loss.attn_layer": "top"}, r"config\.loss\.attn_layer: expected initial or middle or late, got 'top'"),
    ({"loss.velocity_kd": -1.0}, r"config\.loss\.velocity_kd: expected a weight >= 0, got -1\.0"),
    ({"mesh.fsdp": 0}, r"config\.mesh\.fsdp: expected an int >= 1, or -1 \(every device\), got 0"),
    ({"mesh.fsdp": 5}, r"config\.batch_size: expected a multiple of mesh\.data × mesh\.fsdp = 5.*got 16"),
    ({"distributed": "yes"}, r"config\.distributed: expected auto, on or off, got 'yes'"),
    ({"data.horizon": 50}, r"config\.data\.horizon: expected model\.action_horizon = 10 .*, got 50"),
    ({"data.shuffle_buffer": 0}, r"config\.data\.shuffle_buffer: expected a positive int, got 0"),
    ({"data.batchsize": 3}, r"config\.data\.batchsize: unknown key; expected one of .*batch_size"),
    ({"nonexistent": 1}, r"config\.nonexistent: unknown key; expected one of async_checkpoint, batch_size"),
    ({"optim.lr": 1e-3}, r"config\.optim\.lr: unknown key; expected one of b1, b2"),
    ({"data.tokenizer_path": ""}, r"config\.data\.tokenizer_path: expected the PaliGemma sentencepiece model file, "
                                  r"got ''"),
    ({"data.tokenizer_path": "/nonexistent/tok.model"}, r"config\.data\.tokenizer_path: .*got "
                                                        r"'/nonexistent/tok\.model \(not found\)'"),
    ({"data.norm_stats_path": None}, r"config\.data\.norm_stats_path: expected a norm_stats\.json .* for dataset "
                                     r"'shallow_pi_demo', got None"),
    ({"teacher.params": "/nonexistent/params"}, r"config\.teacher\.params: expected an openpi params directory, "
                                                r"got '/nonexistent/params \(not found\)'"),
])
def test_bad_values_are_refused_naming_the_key(changes, match):
    with pytest.raises(ValueError, match=match):
        run_plan.resolve(demo(**changes))


def test_velocity_kd_without_a_teacher_is_refused():
    c = recipes.load(f"{REPO}/experiments/teacher.py:size=demo")
    c.loss.velocity_kd = 1.0
    with pytest.raises(ValueError, match=r"config\.loss\.velocity_kd: expected 0: there is no teacher.*got 1\.0"):
        run_plan.resolve(c)


@pytest.mark.parametrize("datasets, match", [
    ((), r"config\.data\.datasets: expected at least one dataset, got none"),
    (({"name": "", "mapping": "libero"},), r"config\.data\.datasets\[0\]\.name: expected a tfds dataset name, got ''"),
    (({"name": "a", "mapping": "nope"},), r"config\.data\.datasets\[0\]\.mapping: unknown name 'nope' \(expected one "
                                          r"of \['droid', 'droid_velocity', 'lerobot_libero', 'libero'\]"),
    (({"name": "a"}, {"name": "b", "weight": -1.0}), r"config\.data\.datasets\[1\]\.weight: expected a number > 0, "
                                                     r"got -1\.0"),
    (({"name": "a", "weights": 1.0},), r"config\.data\.datasets\[0\]\.weights: unknown field"),
    (({"name": "a", "data_dir": 3},), r"config\.data\.datasets\[0\]\.data_dir: expected a path \(str\) or None, got 3"),
    (({"name": "a", "data_dir": "/nonexistent/rlds"},), r"config\.data\.datasets\[0\]\.data_dir: expected an existing "
                                                        r"directory holding a/<version>/, got '/nonexistent/rlds'"),
    # what a JSON null leaves (ast.literal_eval gives up and the text arrives whole), and a bare dict's keys
    (('[{"name": "a", "norm_stats": null}]',), r"config\.data\.datasets\[0\]: expected a dict .*got '\[\{\"name\": "
                                               r"\"a\", \"norm_stats\": null\}\]' \(write Python literals"),
    (("name", "data_dir"), r"config\.data\.datasets\[0\]: expected a dict .*got 'name'"),
])
def test_malformed_dataset_specs_are_refused(datasets, match):
    with pytest.raises(ValueError, match=match):
        run_plan.resolve(demo(**{"data.datasets": datasets}))


@pytest.mark.parametrize("args, match", [
    (["--config.nonexistent=1"], r"^config\.nonexistent: unknown key 'nonexistent' \(in --config\.nonexistent=1\); "
                                 r"config has keys async_checkpoint, batch_size, .*, workdir$"),
    (["--config.data.nonexistent=1"], r"^config\.data\.nonexistent: unknown key 'nonexistent' .*; config\.data has "
                                      r"keys action_dim, augment, batch_size, cameras, datasets"),
    (["--config.nope.depth=1"], r"^config\.nope\.depth: unknown key 'nope'"),
    (["--config.batch_size=abc"], r"^config\.batch_size: expected int, got 'abc' \(in --config\.batch_size=abc\)$"),
    ([], r"^config arg: 'bogus' is not key=value"),
])
def test_flag_errors_become_one_line(args, match):
    spec = L6 + (":bogus" if not args else "")
    argv = ["train", f"--config={spec}", *args]
    with pytest.raises(Exception) as raised:
        parse(*args, spec=spec).batch_size  # a bad config file is only raised when the config is used
    error = flag_error(raised.value, argv)
    assert isinstance(error, ValueError) and "\n" not in str(error)
    assert re.search(match, str(error)), str(error)


def test_no_such_config_file_is_one_line():
    argv = ["train", "--config", "experiments/nope.py", "--config.batch_size=3"]
    error = flag_error(OSError("Failed loading config file\n  Attempted ..."), argv)
    assert str(error) == ("config: no such file 'experiments/nope.py' (expected e.g. experiments/l6.py or "
                          "experiments/l6.py:demo)")


@pytest.mark.slow  # ~95 s while the data_dir is only found missing after the model is built; ~10 s with validate first
def test_train_command_line_parses_a_list_of_datasets(tmp_path, tokenizer):
    """The README's form on the real command line: parsed (no flags error), then refused for its data_dir."""
    tok = tokenizer
    stats = ns.save({k: ns.NormStats(np.zeros(8), np.ones(8), -np.ones(8), np.ones(8)) for k in ("state", "actions")},
                    tmp_path / "norm_stats.json")
    datasets = '[{"name": "libero_10_no_noops", "data_dir": "/nonexistent/rlds", "mapping": "libero"}]'
    proc = subprocess.run(
        [sys.executable, "-m", "shallow_pi_jax.train", "--config", "experiments/teacher.py:size=tiny",
         "--workdir", str(tmp_path / "run"), f"--config.data.datasets={datasets}",
         f"--config.data.tokenizer_path={tok}", f"--config.data.norm_stats_path={stats}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Flags parsing error" not in proc.stderr and "not supported for overriding" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "data_dir" in last and "/nonexistent/rlds" in last, proc.stderr[-3000:]
