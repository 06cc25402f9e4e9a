"""One record of how a policy sees the world: what distillation fed is what serving feeds; contradictions
are errors naming both values; openpi's configs as recipes; a config error leaves the workdir untouched."""
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import FAST_COMPILE, demo_data_with_stats

from shallow_pi_jax import make_student, train
from shallow_pi_jax.checkpoint import policy_dir, policy_record
from shallow_pi_jax.data.config import DataConfig
from shallow_pi_jax.data.pipeline import make_dataset
from shallow_pi_jax.export import policy_onnx
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.serve.policy import load_checkpoint, load_policy
from shallow_pi_jax.serve.presets import get_preset
from shallow_pi_jax.serve.testing import random_params
from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training import recipes, records

REPO = pathlib.Path(__file__).parents[2]
TEACHER_DEPTH = 2  # the smallest teacher a 1-layer student can be distilled from


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Tiny demo data (its tokenizer, norm stats, one raw frame) and a 2-layer teacher per architecture,
    saved as openpi saves them: params only, no record (config.teacher.preset="data" names it)."""
    root = tmp_path_factory.mktemp("record")
    ds, stats = demo_data_with_stats(root, num_episodes=2, image_size=32)
    step = next(iter(tfds.builder(ds.name, data_dir=str(ds.data_dir)).as_dataset(split="train").take(1)))
    first = jax.tree.map(lambda x: x[0].numpy(), next(iter(step["steps"].batch(1))))
    raw = {"observation/image": first["observation"]["image"], "observation/wrist_image":
           first["observation"]["wrist_image"], "observation/state": first["observation"]["state"],
           "prompt": first["language_instruction"].decode()}
    teachers = {}
    for model in ("pi0", "pi05"):
        cfg = ModelConfig.from_dict(tiny_distill_config(model).model)
        teachers[model] = policy_dir.write(root / f"teacher_{model}", random_params(cfg), cfg)
    demo = {"root": root, "data_dir": str(ds.data_dir), "tokenizer": str(ds.tokenizer_path), "stats": str(stats),
            "raw": raw, "teachers": teachers, "students": {}}
    yield demo
    for _, proc, log in demo["students"].values():  # none left behind, whatever failed
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def tiny_distill_config(model: str):
    """experiments/l6.py's tiny smoke test shrunk to a 2-layer teacher (and a 1-layer student)."""
    c = recipes.distill_config(1, f"size=tiny,model={model}")
    c.model.llm.depth = c.model.expert.depth = TEACHER_DEPTH
    return c


CASES = [("pi05", False), ("pi05", True), ("pi0", False), ("pi0", True)]


def start_distilling(demo) -> None:
    """Start the four 2-step distillations by the train command at once (their compiles overlap on the
    cores), each on one device (a subprocess without the 8 simulated ones: one data stream, unsharded
    saves); `distilled` waits for one."""
    if demo["students"]:
        return
    datasets = [{"name": "shallow_pi_demo", "data_dir": demo["data_dir"], "mapping": "libero"}]
    for model, state_in_prompt in CASES:
        workdir = demo["root"] / f"run_{model}_{state_in_prompt}"
        log = open(demo["root"] / f"run_{model}_{state_in_prompt}.log", "w")  # a file: no pipe to fill up
        proc = subprocess.Popen(
            [sys.executable, "-m", "shallow_pi_jax.train", "--config", f"experiments/l6.py:size=tiny,model={model},"
             "depth=1", "--workdir", str(workdir), f"--config.model.llm.depth={TEACHER_DEPTH}",
             f"--config.model.expert.depth={TEACHER_DEPTH}", "--config.num_steps=2",
             f"--config.data.discrete_state_input={state_in_prompt}",
             f"--config.teacher.params={demo['teachers'][model] / 'params'}", f"--config.data.datasets={datasets}",
             f"--config.data.tokenizer_path={demo['tokenizer']}", f"--config.data.norm_stats_path={demo['stats']}"],
            cwd=REPO, env={**os.environ, "XLA_FLAGS": FAST_COMPILE}, stdout=log, stderr=subprocess.STDOUT, text=True)
        demo["students"][(model, state_in_prompt)] = (workdir, proc, log)


def distilled(demo, model: str, state_in_prompt: bool) -> pathlib.Path:
    """The workdir of the run distilled for (model, state_in_prompt), once it has finished."""
    start_distilling(demo)
    workdir, proc, log = demo["students"][(model, state_in_prompt)]
    try:
        rc = proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert rc == 0, pathlib.Path(log.name).read_text()[-3000:]
    return workdir


@pytest.mark.slow  # a 2-step distillation per case
@pytest.mark.parametrize("model, state_in_prompt", CASES)
def test_served_prompt_tokens_equal_the_trained_ones(demo, model, state_in_prompt):
    workdir = distilled(demo, model, state_in_prompt)
    record = json.loads((workdir / "student" / policy_record.FILE).read_text())
    assert record["state_in_prompt"] is state_in_prompt and record["pi05"] is (model == "pi05")

    # The first frame as the run's own data config (its config.json) tokenizes it, and as serving does.
    run_data = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text())).data
    trained = next(make_dataset(dict(run_data.to_dict(), batch_size=1, shuffle_buffer=1), train=False))
    policy = load_policy(workdir / "student", env="demo", tokenizer_path=demo["tokenizer"])
    served = policy.input_transform(demo["raw"])
    np.testing.assert_array_equal(served["tokenized_prompt"], trained["tokenized_prompt"][0])
    np.testing.assert_array_equal(served["tokenized_prompt_mask"], trained["tokenized_prompt_mask"][0])
    np.testing.assert_allclose(served["state"], trained["state"][0], atol=1e-6)
    # The state tokens make the prompt longer exactly when the record says they are in it.
    n_prompt = int(served["tokenized_prompt_mask"].sum())
    without = int(policy.input_transform.tokenizer.tokenize(demo["raw"]["prompt"], None)[1].sum())
    assert (n_prompt > without) is state_in_prompt
    assert policy.metadata["policy_record"]["state_in_prompt"] is state_in_prompt


@pytest.mark.slow  # reuses a student of the test above (trains one if run alone)
def test_the_record_is_checked_copied_and_contradictions_name_both_values(demo, tmp_path):
    student = distilled(demo, "pi05", True) / "student"
    with pytest.raises(ValueError, match=r"state_in_prompt: .*policy_record.json says True, "
                                         r"--openpi-config pi05_libero says False"):
        load_checkpoint(student, preset=get_preset("demo"), openpi_config="pi05_libero", params=False)
    # make_student copies the teacher's record; a contradicting --openpi-config stops it before writing.
    out = make_student.make_student(make_student.parse_args(["--teacher", str(student), "--depth", "1", "--out",
                                                             str(tmp_path / "copy"), "--quiet"]))
    assert policy_record.differences(policy_record.read(out), policy_record.read(student)) == {}
    with pytest.raises(ValueError, match=r"state_in_prompt: .* says True, --openpi-config pi05_droid says False|"
                                         r"cameras: .*--openpi-config pi05_droid says"):
        make_student.make_student(make_student.parse_args(["--teacher", str(student), "--depth", "1", "--out",
                                                           str(tmp_path / "bad"), "--openpi-config", "pi05_droid"]))
    assert not (tmp_path / "bad").exists()
    # The record is sealed by checksums.json: an edit after writing is refused, naming the file.
    shutil.copytree(student, tmp_path / "edited")
    path = tmp_path / "edited" / policy_record.FILE
    path.write_text(path.read_text().replace('"state_in_prompt": true', '"state_in_prompt": false'))
    with pytest.raises(ValueError, match=r"policy_record\.json: expected (sha256|size)"):
        load_checkpoint(tmp_path / "edited", preset=get_preset("demo"), params=False)


def test_a_data_config_contradicting_the_teacher_names_both_values(tmp_path):
    c = recipes.load(f"{REPO}/experiments/l6.py")  # π0.5's default: the state in the prompt
    (tmp_path / "teacher").mkdir()
    c.teacher.params, c.teacher.preset = str(tmp_path / "teacher"), "pi05_libero"
    with pytest.raises(ValueError, match=r"state_in_prompt: teacher.preset='pi05_libero' says False, "
                                         r"config.data.discrete_state_input gives True"):
        records.teacher_record(DataConfig.from_any(c.data), c.teacher.params, c.teacher.preset)
    c.teacher.preset = ""
    with pytest.raises(ValueError, match=r"config.teacher.preset: expected the openpi config .* got ''"):
        records.teacher_record(DataConfig.from_any(c.data), c.teacher.params, c.teacher.preset)


def test_the_asset_id_is_compared_when_both_records_state_one():
    libero = policy_record.openpi("pi05_libero")
    other = dataclasses.replace(libero, asset_id="droid")
    assert policy_record.differences(libero, other) == {"asset_id": ("physical-intelligence/libero", "droid")}
    assert policy_record.differences(libero, dataclasses.replace(libero, asset_id=None)) == {}


def test_onnx_export_reads_the_cameras_the_record_has_the_robot_send():
    record = policy_record.openpi("pi05_libero")
    assert policy_onnx.graph_cameras(None, record, full_prefix=False) == ("base_0_rgb", "left_wrist_0_rgb")
    assert policy_onnx.graph_cameras(None, record, full_prefix=True) is None
    assert policy_onnx.graph_cameras(None, None, full_prefix=False) is None
    with pytest.raises(ValueError, match=r"--cameras: the policy record has the robot send \['base_0_rgb', "
                                         r"'left_wrist_0_rgb'\], --cameras \['base_0_rgb'\] leaves out "
                                         r"\['left_wrist_0_rgb'\]"):
        policy_onnx.graph_cameras(("base_0_rgb",), record, full_prefix=False)


@pytest.mark.parametrize("name", ["pi05_libero", "pi0_libero", "pi05_droid"])
def test_openpi_recipes_validate_and_equal_openpis_record(name, tmp_path):
    c = recipes.load(f"{REPO}/experiments/{name}.py")
    for p in ("teacher/params", "tok.model", "norm_stats.json"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).touch()
    c.teacher.params = str(tmp_path / "teacher")
    c.data.tokenizer_path, c.data.norm_stats_path = str(tmp_path / "tok.model"), str(tmp_path / "norm_stats.json")
    plan = run_plan.resolve(c)
    assert policy_record.differences(plan.record, policy_record.OPENPI[name]) == {}
    assert c.student.depth == 6 and c.loss.attention_kd == 1.0 and c.loss.velocity_kd == 1.0
    if name.endswith("libero"):
        assert [d["name"] for d in c.data.datasets] == [f"libero_{s}_no_noops" for s in
                                                        ("spatial", "object", "goal", "10")]


@pytest.mark.parametrize("spec", ["l6.py", "pi05_libero.py", "l6.py:size=tiny"])
def test_a_config_error_leaves_the_workdir_untouched(tmp_path, spec):
    """`--config experiments/l6.py` without a teacher, a recipe without one, a demo config with a bad value:
    refused before anything is written (and, for the demo, before its data or teacher are built)."""
    c = recipes.load(f"{REPO}/experiments/{spec}")
    if spec.endswith("tiny"):
        c.num_steps = 0
    match = r"config\.num_steps" if spec.endswith("tiny") else r"config\.teacher\.params"
    with pytest.raises(ValueError, match=match):
        train.run(c, tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=match):
        train.run(c, tmp_path / "empty", progress=False)
    assert list((tmp_path / "empty").iterdir()) == []
