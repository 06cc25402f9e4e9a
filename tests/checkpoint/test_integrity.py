"""Nothing corrupt or non-finite is loaded: checksums of policy directories, finite parameters and
norm stats, one-line errors for broken orbax metadata (issue #23)."""
import json
import os
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from shallow_pi_jax.checkpoint import checksums, openpi_params, policy_dir
from shallow_pi_jax.checkpoint.layer_reader import ParamsReader
from shallow_pi_jax.data import norm_stats
from shallow_pi_jax.serve.testing import random_params, tiny_config, tiny_norm_stats

LEAF = "PaliGemma/llm/layers/mlp/linear"


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    """A tiny policy directory written by policy_dir.write (params, configs, norm stats, checksums)."""
    base = tmp_path_factory.mktemp("sealed")
    cfg = tiny_config(depth=1, cameras=("base_0_rgb",))
    params = random_params(cfg)
    norm_stats.save(tiny_norm_stats(8, 7), base / "stats.json")
    root = policy_dir.write(base / "policy", params, cfg, layer_map={"indices": [0]}, norm_stats=base / "stats.json")
    return root, cfg, openpi_params.flatten_params(params)


@pytest.fixture
def copy(sealed, tmp_path):
    shutil.copytree(sealed[0], tmp_path / "policy")
    return tmp_path / "policy"


UNIFORM_6 = [0, 3, 7, 10, 14, 17]
# layer_map.json as make_student wrote it before there was one schema, and as a trainer wrote it
# before the action expert had a map of its own.
OLD_MAKE_STUDENT = {
    "teacher_depth": 18, "student_depth": 6, "indices": UNIFORM_6, "strategy": "uniform",
    "expert_indices": UNIFORM_6, "expert_strategy": "uniform", "teacher": "/ckpt/pi05_base/params",
    "teacher_sha256": "ab" * 32, "checksum": "sha256 over every file of the teacher params/ directory ...",
    "dtype": "keep", "teacher_params": 3_350_000_000, "student_params": 1_900_000_000,
    "applies_to": ["PaliGemma/llm/layers/* (Gemma backbone and action expert)"], "teacher_lora_pairs_merged": 0,
    "created": "2026-01-01T00:00:00+0000"}
OLD_TRAINER = {"teacher_depth": 18, "student_depth": 6, "indices": UNIFORM_6, "strategy": "first",
               "teacher": "/ckpt/pi05_libero/params"}


def test_layer_map_is_written_and_read_in_one_schema(sealed, copy):
    root = sealed[0]
    written = json.loads((root / policy_dir.LAYER_MAP).read_text())
    assert list(written) == list(policy_dir.LAYER_MAP_KEYS)
    assert written["indices"] == written["expert_indices"] == [0] and written["teacher"] is None
    assert written["student_params"] == sum(x.size for x in sealed[2].values())

    for old in (OLD_MAKE_STUDENT, OLD_TRAINER):
        (copy / policy_dir.LAYER_MAP).write_text(json.dumps(old))
        policy_dir.write_checksums(copy)
        lm = policy_dir.read(copy).layer_map
        assert list(lm) == list(policy_dir.LAYER_MAP_KEYS)
        assert {k: v for k, v in lm.items() if v is not None} == {
            **{k: v for k, v in old.items() if k not in ("checksum", "applies_to", "created")},
            "expert_indices": UNIFORM_6, "expert_strategy": old["strategy"]}
    assert lm["teacher_sha256"] is None and lm["teacher"] == "/ckpt/pi05_libero/params"


def _largest_chunk_file(root: pathlib.Path) -> pathlib.Path:
    # The tensor data lives in the OCDBT data files under params/**/d/; the largest holds the weights.
    return max((p for p in (root / "params").rglob("d/*") if p.is_file()), key=lambda p: p.stat().st_size)


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert excinfo.type is ValueError and "\n" not in msg, msg
    return msg


def test_write_seals_every_file_and_load_verifies(sealed):
    root, cfg, ref = sealed
    manifest = json.loads((root / policy_dir.CHECKSUMS).read_text())["files"]
    on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                     if p.is_file() and p.name != policy_dir.CHECKSUMS)
    assert sorted(manifest) == on_disk
    assert {"model_config.json", "layer_map.json", "assets/norm_stats.json", "params/_METADATA"} <= set(manifest)
    meta = root / "params" / "_METADATA"
    assert manifest["params/_METADATA"]["size"] == meta.stat().st_size
    assert manifest["params/_METADATA"]["sha256"] == checksums.file_sha256(meta)
    assert checksums.verify(root) is True
    pd = policy_dir.read(root)
    _, params = policy_dir.load_model(pd.params_dir, config=pd.config)
    got = openpi_params.flatten_params(params)
    assert sorted(got) == sorted(ref)
    np.testing.assert_array_equal(got[LEAF], ref[LEAF])
    np.testing.assert_array_equal(ParamsReader(root).read(LEAF, layers=[0]), ref[LEAF][[0]])


def test_flipped_bit_in_a_chunk_is_named(copy, sealed):
    ref = sealed[2]
    chunk = _largest_chunk_file(copy)
    rel = chunk.relative_to(copy).as_posix()
    want = checksums.file_sha256(chunk)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    got = checksums.file_sha256(chunk)
    for load in (lambda: policy_dir.load_model(copy / "params", config=sealed[1]),
                 lambda: ParamsReader(copy / "params"),
                 lambda: openpi_params.restore_params(copy)):
        with pytest.raises(ValueError) as e:
            load()
        msg = _one_line_error(e)
        assert f"{rel}: expected sha256 {want}, got {got}" in msg and "--no-checksums" in msg
    # Without verification the flip loads silently as different weights: what the checksum is for.
    _, params = policy_dir.load_model(copy / "params", config=sealed[1], verify=False)
    flat = openpi_params.flatten_params(params)
    assert any(not np.array_equal(flat[p], ref[p]) for p in ref)


def test_cheap_check_at_read_catches_missing_extra_resized_and_edited_files(copy):
    chunk = _largest_chunk_file(copy)
    chunk.write_bytes(chunk.read_bytes()[:-10])
    (copy / "params" / "stray").write_bytes(b"x")
    (copy / "params" / "commit_success.txt").unlink()
    config = (copy / "model_config.json").read_text()
    assert '"depth": 1' in config
    (copy / "model_config.json").write_text(config.replace('"depth": 1', '"depth": 2'))  # same size
    (copy / "tokenizer.model").write_bytes(b"not covered")  # outside params/: not checked
    with pytest.raises(ValueError) as e:
        policy_dir.read(copy)
    msg = _one_line_error(e)
    size = chunk.stat().st_size
    assert "4 file(s) differ" in msg
    assert f"{chunk.relative_to(copy).as_posix()}: expected size {size + 10}, got {size} bytes" in msg
    assert "params/stray: not in the manifest (extra file, 1 bytes)" in msg
    assert "params/commit_success.txt: missing" in msg
    assert "model_config.json: expected sha256" in msg
    assert "tokenizer.model" not in msg
    policy_dir.read(copy, verify=False)  # skipped on request


def test_write_refuses_nan_and_loaders_name_the_nan_leaf(tmp_path, sealed):
    _, cfg, ref = sealed
    bad = dict(ref)
    bad[LEAF] = ref[LEAF].copy()
    bad[LEAF][0, 1, 2] = np.nan
    bad[LEAF][0, 3, 4] = np.inf
    tree = openpi_params.unflatten_params(bad)
    with pytest.raises(ValueError, match=f"params to write to .*{LEAF} \\(2 of {bad[LEAF].size}\\)"):
        policy_dir.write(tmp_path / "refused", tree, cfg)
    assert not (tmp_path / "refused").exists()
    root = policy_dir.write(tmp_path / "nan", tree, cfg, check_finite=False)
    params_dir = (root / "params").resolve()
    with pytest.raises(ValueError) as e:
        policy_dir.load_model(root / "params", config=cfg)
    assert _one_line_error(e) == f"{params_dir}: 1 parameter leaves hold NaN/inf values: {LEAF} (2 of {bad[LEAF].size})"
    with pytest.raises(ValueError, match=f"leaf '{LEAF}' layers \\[0\\] holds 2 NaN/inf values"):
        ParamsReader(root).read(LEAF, layers=[0])
    # The reader checks what it returns: rows without the NaN are fine, as are unaffected leaves.
    np.testing.assert_array_equal(ParamsReader(root).read("action_in_proj/kernel"), ref["action_in_proj/kernel"])
    policy_dir.load_model(root / "params", config=cfg, check_finite=False)
    # Accelerator arrays are counted by one jitted reduction (CPU ones on the host, as above).
    counts = openpi_params._count_nonfinite_device({"a": jnp.array([np.nan, 1.0, -np.inf]), "b": jnp.ones(2)})
    assert {k: int(v) for k, v in counts.items()} == {"a": 2, "b": 0}


def test_norm_stats_non_finite_and_wrong_dims(tmp_path):
    stats = tiny_norm_stats(8, 7)
    path = norm_stats.save(stats, tmp_path / "norm_stats.json")
    assert norm_stats.load(path, model_dim=8, state_dim=8, action_dim=7)["state"].dim == 8
    data = json.loads(path.read_text())
    data["norm_stats"]["actions"]["std"][3] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(data))  # json writes the NaN literal Python reads back
    with pytest.raises(ValueError, match=r"nan\.json: 'actions\.std' holds NaN/inf at dims \[3\] \(1 of 7\)"):
        norm_stats.load(tmp_path / "nan.json")
    with pytest.raises(ValueError, match="norm stats to write to .*'actions.std' holds NaN"):
        norm_stats.save({"actions": norm_stats.NormStats.from_json(data["norm_stats"]["actions"])},
                        tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()
    with pytest.raises(ValueError, match=r"norm_stats\.json: 'state' has 8 dims, expected at most the model's "
                                         r"action_dim 6"):
        norm_stats.load(path, model_dim=6)
    short = norm_stats.save(tiny_norm_stats(3, 7), tmp_path / "short.json")
    with pytest.raises(ValueError, match=r"short\.json: 'state' has 3 dims, expected at least 8"):
        norm_stats.load(short, model_dim=8, state_dim=8)
    (tmp_path / "cut.json").write_text(path.read_text()[:50])
    with pytest.raises(ValueError, match=r"cut\.json: truncated or corrupt"):
        norm_stats.load(tmp_path / "cut.json")


def _truncate_metadata(params: pathlib.Path) -> str:
    meta = params / "_METADATA"
    meta.write_bytes(meta.read_bytes()[:100])
    return "params/_METADATA"


def _empty_manifest(params: pathlib.Path) -> str:
    (params / "manifest.ocdbt").write_bytes(b"")
    return "params/manifest.ocdbt"


def _garbled_manifest(params: pathlib.Path) -> str:
    manifest = params / "manifest.ocdbt"
    manifest.write_bytes(np.random.default_rng(0).bytes(manifest.stat().st_size))
    return "params/manifest.ocdbt"


@pytest.mark.parametrize("corrupt, reason", [(_truncate_metadata, "truncated or corrupt"),
                                             (_empty_manifest, "empty \\(0 bytes"),
                                             (_garbled_manifest, "Error decoding manifest")])
def test_corrupt_orbax_metadata_is_one_line_naming_the_file(copy, corrupt, reason):
    rel = corrupt(copy / "params")
    # With checksums: the manifest names the changed file before orbax reads anything.
    for load in (lambda: policy_dir.read(copy), lambda: ParamsReader(copy)):
        with pytest.raises(ValueError) as e:
            load()
        assert f"{rel}: expected " in _one_line_error(e)
    # Without (skipped, or an openpi checkpoint): orbax's metadata read, explained in one line.
    (copy / policy_dir.CHECKSUMS).unlink()
    for load in (lambda: policy_dir.read(copy).shapes, lambda: ParamsReader(copy),
                 lambda: policy_dir.load_model(copy), lambda: openpi_params.restore_params(copy)):
        with pytest.raises(ValueError, match=reason) as e:
            load()
        assert str((copy / rel).resolve()) in _one_line_error(e)


def test_missing_params_and_corrupt_manifest(copy):
    (copy / policy_dir.CHECKSUMS).write_text('{"format": "shallow_pi_jax.checksums/1", "fil')
    with pytest.raises(ValueError, match=r"checksums\.json: truncated or corrupt"):
        policy_dir.read(copy)
    shutil.rmtree(copy / "params")
    for load in (lambda: policy_dir.read(copy), lambda: ParamsReader(copy)):
        with pytest.raises(ValueError, match=f"{copy.resolve()}: params/ is missing"):
            load()


def test_move_carries_or_writes_the_manifest(copy, tmp_path):
    moved = policy_dir.move(copy, tmp_path / "moved")
    assert checksums.verify(moved) is True
    unsealed = tmp_path / "unsealed"
    shutil.copytree(moved, unsealed / "src")
    os.remove(unsealed / "src" / policy_dir.CHECKSUMS)
    assert checksums.verify(unsealed / "src") is False  # nothing to check against
    dst = policy_dir.move(unsealed / "src", unsealed / "dst")
    assert checksums.read_manifest(dst) == checksums.read_manifest(moved)
