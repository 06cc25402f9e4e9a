"""Students from teachers: every student layer is the mapped teacher layer in the backbone AND the
expert, everything else is identical, sharded arrays stay sharded, and make_student is all or nothing."""
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from shallow_pi_jax import cli
from shallow_pi_jax import make_student as tool
from shallow_pi_jax.checkpoint import lora, policy_dir
from shallow_pi_jax.checkpoint import openpi_params as C
from shallow_pi_jax.checkpoint.layer_reader import ParamsReader
from shallow_pi_jax.training import student_init as S
from shallow_pi_jax.training.layer_map import LayerMap, make_layer_map

REPO = pathlib.Path(__file__).resolve().parents[2]

FIXTURES = REPO / "tests" / "fixtures" / "openpi_tiny"
UNIFORM_6 = (0, 3, 7, 10, 14, 17)


def _teacher(fixture_dir):
    return C.flatten_params(C.restore_params(fixture_dir / "params"))


def _assert_student(teacher, student, indices):
    """Layer j of every stack == teacher layer indices[j]; every other leaf identical."""
    assert sorted(student) == sorted(teacher)
    backbone = [p for p in teacher if S.is_layer_leaf(p) and "_1" not in p]
    expert = [p for p in teacher if S.is_layer_leaf(p) and "_1" in p]
    assert backbone and expert
    for p in teacher:
        t, s = np.asarray(teacher[p]), np.asarray(student[p])
        assert s.dtype == t.dtype, p
        if S.is_layer_leaf(p):
            assert s.shape == (len(indices),) + t.shape[1:], p
            for j, i in enumerate(indices):
                np.testing.assert_array_equal(s[j], t[i], err_msg=f"{p} student layer {j} != teacher {i}")
        else:
            np.testing.assert_array_equal(s, t, err_msg=p)


def test_uniform_student_layers(fixture_dir):
    teacher = _teacher(fixture_dir)
    depth = json.loads((fixture_dir / "config.json").read_text())["gemma_llm"]["depth"]
    assert S.teacher_depth(C.unflatten_params(teacher)) == depth
    lm = make_layer_map(depth, 6)
    student = C.flatten_params(S.student_params(C.unflatten_params(teacher), lm))
    _assert_student(teacher, student, lm.indices)
    # outside the stacks the student holds the teacher's own arrays
    assert student["PaliGemma/img/embedding/kernel"] is teacher["PaliGemma/img/embedding/kernel"]
    shapes = C.flatten_params(S.student_shapes(C.unflatten_params(teacher), lm))
    assert {p: x.shape for p, x in shapes.items()} == {p: x.shape for p, x in student.items()}


def test_identity_map_is_the_teacher(fixture_dir):
    teacher = _teacher(fixture_dir)
    depth = S.teacher_depth(C.unflatten_params(teacher))
    student = C.flatten_params(S.student_params(C.unflatten_params(teacher), list(range(depth))))
    assert sorted(student) == sorted(teacher)
    for p in teacher:
        assert student[p].dtype == teacher[p].dtype and student[p].shape == teacher[p].shape
        np.testing.assert_array_equal(student[p], teacher[p], err_msg=p)


def test_lora_tree_in_memory_gives_the_merged_student():
    """LoRA pairs still in a teacher tree are merged into the student: the student of the merged
    teacher, numpy or sharded, and no LoRA leaves (trees read from disk arrive merged already)."""
    teacher = _teacher(FIXTURES / "pi0")
    rng = np.random.default_rng(0)
    for path, rank in (("PaliGemma/llm/layers/attn/q_einsum", 16), ("PaliGemma/llm/layers/mlp_1/linear", 3)):
        w = teacher[f"{path}/w" if "einsum" in path else path]
        a, b = (f"{path}/lora_a", f"{path}/lora_b") if "einsum" in path else (f"{path}_lora_a", f"{path}_lora_b")
        teacher[a] = rng.normal(size=w.shape[:-1] + (rank,)).astype(np.float32)
        teacher[b] = rng.normal(size=w.shape[:-2] + (rank, w.shape[-1])).astype(np.float32)
    merged, n = lora.merge_lora(teacher)
    assert n == 2
    indices = (1, 8, 16)
    want = C.flatten_params(S.student_params(C.unflatten_params(merged), indices))
    _assert_student(merged, want, indices)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("fsdp",))
    sharded = {p: jax.device_put(x, NamedSharding(mesh, P())) for p, x in teacher.items()}
    for tree in (teacher, sharded):
        student = C.flatten_params(S.student_params(C.unflatten_params(tree), indices))
        assert sorted(student) == sorted(want)
        for p in want:
            np.testing.assert_allclose(np.asarray(student[p]), want[p], rtol=1e-6, atol=1e-6, err_msg=p)
    # the teacher's arrays are untouched (not merged in place, not donated)
    np.testing.assert_array_equal(np.asarray(sharded["PaliGemma/llm/layers/attn/q_einsum/w"]),
                                  teacher["PaliGemma/llm/layers/attn/q_einsum/w"])
    shapes = C.flatten_params(S.student_shapes(C.unflatten_params(teacher), indices))
    assert {p: s.shape for p, s in shapes.items()} == {p: x.shape for p, x in want.items()}


def test_sharded_teacher_stays_sharded():
    teacher = _teacher(FIXTURES / "pi05")
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))

    def spec(p, x):
        # layer axis over 'data' (18 % 2 == 0), last axis over 'fsdp' when it divides
        last = "fsdp" if x.ndim >= 2 and x.shape[-1] % 4 == 0 else None
        first = "data" if S.is_layer_leaf(p) else None
        return P(first, *([None] * (x.ndim - 2)), last) if x.ndim >= 2 else P()

    sharded = {p: jax.device_put(x, NamedSharding(mesh, spec(p, x))) for p, x in teacher.items()}
    for indices, first_axis in ((UNIFORM_6, "data"), ((0, 9, 17), None)):  # 3 layers do not split over 2
        student = C.flatten_params(S.student_params(C.unflatten_params(sharded), indices))
        _assert_student(teacher, student, indices)
        q = student["PaliGemma/llm/layers/mlp/gating_einsum"]
        assert isinstance(q, jax.Array) and len(q.sharding.device_set) == 8
        assert q.sharding.spec == P(first_axis, None, None, "fsdp")
        n = len(indices) // (2 if first_axis else 1)
        assert q.addressable_shards[0].data.shape == (n,) + q.shape[1:-1] + (q.shape[-1] // 4,)
        assert student["PaliGemma/img/head/kernel"] is sharded["PaliGemma/img/head/kernel"]


def test_bad_maps_and_trees():
    teacher = _teacher(FIXTURES / "pi0")
    tree = C.unflatten_params(teacher)
    with pytest.raises(ValueError, match="strictly increasing"):
        S.student_params(tree, [0, 3, 3])
    with pytest.raises(ValueError, match="out of range"):
        S.student_params(tree, [0, 3, 18])
    with pytest.raises(ValueError, match="teacher depth 24, but the teacher has 18"):
        S.student_params(tree, LayerMap(24, (0, 23)))
    no_expert = {p: x for p, x in teacher.items() if "_1" not in p}
    with pytest.raises(ValueError, match="q_einsum_1"):
        S.student_params(C.unflatten_params(no_expert), [0, 1])
    ragged = dict(teacher, **{"PaliGemma/llm/layers/mlp_1/linear": teacher["PaliGemma/llm/layers/mlp_1/linear"][:12]})
    with pytest.raises(ValueError, match="disagree on depth.*axis 0 = 12"):
        S.student_params(C.unflatten_params(ragged), [0, 1])
    # an expected student tree that does not match
    expected = S.student_shapes(tree, [0, 1])
    expected["action_in_proj"]["kernel"] = jax.ShapeDtypeStruct((7, 7), jnp.float32)
    with pytest.raises(ValueError, match="action_in_proj/kernel: expected shape"):
        S.student_params(tree, [0, 1], expected=expected)


def _teacher_checkpoint(tmp_path, variant="pi05"):
    """A copy of a fixture laid out like an openpi checkpoint: CKPT/params + CKPT/assets."""
    ckpt = tmp_path / "teacher"
    shutil.copytree(FIXTURES / variant / "params", ckpt / "params")
    (ckpt / "assets" / "trossen").mkdir(parents=True)
    (ckpt / "assets" / "trossen" / "norm_stats.json").write_text('{"norm_stats": {}}')
    return ckpt


@pytest.mark.slow
def test_cli_end_to_end(tmp_path):
    ckpt = _teacher_checkpoint(tmp_path)
    out = tmp_path / "students" / "l6"
    assert tool.main(["--teacher", str(ckpt / "params"), "--depth", "6", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["assets", "checksums.json", "layer_map.json", "params"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["l6"]  # no temp dirs left
    assert (out / "assets" / "trossen" / "norm_stats.json").read_text() == '{"norm_stats": {}}'
    record = json.loads((out / "layer_map.json").read_text())
    assert list(record) == list(policy_dir.LAYER_MAP_KEYS)  # the one schema, as the trainer's
    assert record["teacher_depth"] == 18 and record["student_depth"] == 6
    assert record["indices"] == list(UNIFORM_6) and record["strategy"] == "uniform"
    assert record["teacher"] == str((ckpt / "params").resolve())
    assert record["teacher_sha256"] == C.checkpoint_digest(ckpt / "params")
    teacher = _teacher(FIXTURES / "pi05")
    student = C.flatten_params(C.restore_params(out / "params"))
    _assert_student(teacher, student, UNIFORM_6)
    assert record["student_params"] == sum(x.size for x in student.values())

    # explicit layers, bfloat16, checkpoint root instead of params/
    out2 = tmp_path / "l3"
    assert tool.main(["--teacher", str(ckpt), "--layers", "2,9,16", "--dtype", "bfloat16", "--compress",
                      "--out", str(out2), "--quiet"]) == 0
    meta = ParamsReader(out2 / "params")._open("PaliGemma/llm/layers/mlp/linear").spec().to_json()["metadata"]
    assert meta["compressor"]["id"] == "zstd"
    student = C.flatten_params(C.restore_params(out2 / "params"))
    assert all(x.dtype == jnp.bfloat16 for x in student.values())
    _assert_student({p: x.astype(jnp.bfloat16) for p, x in teacher.items()}, student, (2, 9, 16))
    assert json.loads((out2 / "layer_map.json").read_text())["strategy"] == "explicit"


@pytest.mark.parametrize("extra, match", [
    (["--layers", "0,3,3,10,14,17"], "strictly increasing"),
    (["--layers", "0,3,7,10,14,18"], "out of range"),
    (["--depth", "5", "--layers", "0,3,7,10,14,17"], "length"),
    (["--depth", "19"], "student_depth"),
    ([], "--depth: required"),
    (["--layers", "0,a"], "comma-separated"),
])
def test_cli_bad_map_writes_nothing(tmp_path, capsys, extra, match):
    ckpt = _teacher_checkpoint(tmp_path)
    out = tmp_path / "out"
    # --depth missing is a usage error (status 2, like argparse's); a bad map is an error (1)
    status = 2 if not extra else 1
    assert cli.run(tool.main, ["--teacher", str(ckpt / "params"), "--out", str(out), "--quiet"] + extra) == status
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


def test_cli_mismatched_tree_and_existing_out(tmp_path, capsys):
    teacher = _teacher(FIXTURES / "pi0")
    C.save_params(C.unflatten_params({p: x for p, x in teacher.items() if "mlp_1" not in p and "_1/" not in p}),
                  tmp_path / "broken" / "params")
    assert cli.run(tool.main, ["--teacher", str(tmp_path / "broken" / "params"), "--depth", "6",
                               "--out", str(tmp_path / "out"), "--quiet"]) == 1
    assert "q_einsum_1" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
    (tmp_path / "out").mkdir()
    assert cli.run(tool.main, ["--teacher", str(FIXTURES / "pi0" / "params"), "--depth", "6",
                               "--out", str(tmp_path / "out"), "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_cli_script_runs(tmp_path):
    """The file runs as a script (fresh interpreter) and prints its progress."""
    out = tmp_path / "l4"
    r = subprocess.run([sys.executable, "-m", "shallow_pi_jax.make_student", "--teacher",
                        str(FIXTURES / "pi0" / "params"), "--depth", "4", "--strategy", "last", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "[14, 15, 16, 17] (last)" in r.stdout and "student leaves" in r.stderr
    assert json.loads((out / "layer_map.json").read_text())["indices"] == [14, 15, 16, 17]


@pytest.mark.slow
def test_student_model_runs(fixture_dir):
    """The 6-layer student built by make_student is a valid tree for the student model and runs."""
    from shallow_pi_jax.models.config import ModelConfig
    from shallow_pi_jax.models.pi0 import Pi0

    io = np.load(fixture_dir / "io.npz")
    prompt_len = 16  # the prompt length is not a parameter; a short one keeps this test fast
    cfg = ModelConfig.from_fixture(fixture_dir / "config.json", max_token_len=prompt_len)
    obs = {"images": {k: io[f"images.{k}"][:1] for k in cfg.image_keys},
           "image_masks": {k: io[f"image_masks.{k}"][:1] for k in cfg.image_keys},
           "state": io["state"][:1], "tokenized_prompt": io["tokenized_prompt"][:1, :prompt_len],
           "tokenized_prompt_mask": io["tokenized_prompt_mask"][:1, :prompt_len]}
    teacher = C.restore_params(fixture_dir / "params")
    lm = make_layer_map(S.teacher_depth(teacher), 6)
    model = Pi0(cfg.with_depth(6))
    x_t, time = io["x_t"][:1], io["time"][:1]
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), obs, x_t, time, method=Pi0.velocity))["params"]
    student = S.student_params(teacher, lm, expected=expected)
    C.validate_params(student, expected, check_dtype=True)

    v_t = model.apply({"params": student}, obs, x_t, time, method=Pi0.velocity)
    assert v_t.shape == (1, cfg.action_horizon, cfg.action_dim) and bool(jnp.isfinite(v_t).all())
    actions = model.apply({"params": student}, jax.random.key(0), obs, num_steps=2,
                          noise=io["sample_noise"][:1], method=Pi0.sample_actions)
    assert actions.shape == (1, cfg.action_horizon, cfg.action_dim) and bool(jnp.isfinite(actions).all())
