"""openpi checkpoint I/O on the shared fixtures: restore (dtype, sharding, nnx 'value' leaves),
atomic save that openpi's reader reads back, validation errors, leaf/slice reads from disk."""
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from shallow_pi_jax.checkpoint import openpi_params as C
from shallow_pi_jax.checkpoint.layer_reader import ParamsReader


def _tree_txt(fixture_dir):
    """{path: shape} from the fixture's params_tree.txt (written by openpi's side)."""
    out = {}
    for line in (fixture_dir / "params_tree.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            path, shape, _ = line.split("\t")
            out[path] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return out


def _orbax_plain(params_dir):
    with ocp.PyTreeCheckpointer() as ckptr:
        return C.flatten_params(ckptr.restore(pathlib.Path(params_dir).resolve())["params"])


def _openpi_style_restore(params_dir, restore_type, sharding=None):
    """What openpi's model.restore_params does: metadata item + ArrayRestoreArgs for every leaf."""
    with ocp.PyTreeCheckpointer() as ckptr:
        item = {"params": ckptr.metadata(params_dir).item_metadata["params"]}
        args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding, restore_type=restore_type), item)
        return C.flatten_params(
            ckptr.restore(params_dir, ocp.args.PyTreeRestore(item=item, restore_args=args))["params"])


def _assert_equal_flat(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.asarray(a[k]).dtype == np.asarray(b[k]).dtype, k
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_flatten_unflatten():
    tree = {"a": {"b": 1, "c": {"d": 2}}, "e": 3}
    flat = C.flatten_params(tree)
    assert flat == {"a/b": 1, "a/c/d": 2, "e": 3}
    assert C.unflatten_params(flat) == tree
    with pytest.raises(ValueError, match="conflict"):
        C.unflatten_params({"a": 1, "a/b": 2})
    with pytest.raises(ValueError, match="conflict"):
        C.unflatten_params({"a/b": 2, "a": 1})


def test_restore_matches_fixture(fixture_dir):
    params = C.restore_params(fixture_dir / "params")
    flat = C.flatten_params(params)
    expected = _tree_txt(fixture_dir)
    assert {p: x.shape for p, x in flat.items()} == expected
    assert all(isinstance(x, np.ndarray) and x.dtype == np.float32 for x in flat.values())
    _assert_equal_flat(flat, _orbax_plain(fixture_dir / "params"))
    # the checkpoint root (parent of params/) is accepted too
    _assert_equal_flat(C.flatten_params(C.restore_params(fixture_dir)), flat)
    assert C.flatten_params(C.params_shapes(fixture_dir / "params"))["action_in_proj/kernel"].shape == \
        expected["action_in_proj/kernel"]


def test_restore_dtype(fixture_dir):
    ref = C.flatten_params(C.restore_params(fixture_dir / "params"))
    bf = C.flatten_params(C.restore_params(fixture_dir / "params", dtype=jnp.bfloat16))
    for p, x in bf.items():
        assert x.dtype == jnp.bfloat16, p
        np.testing.assert_array_equal(x, ref[p].astype(jnp.bfloat16), err_msg=p)


def test_restore_sharded():
    fixture = pathlib.Path(__file__).parents[1] / "fixtures" / "openpi_tiny" / "pi05" / "params"
    ref = C.flatten_params(C.restore_params(fixture))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))

    def fsdp(path, aval):
        # shard the last axis over fsdp when it divides, else replicate
        if aval.ndim and aval.shape[-1] % 4 == 0:
            return NamedSharding(mesh, P(*([None] * (aval.ndim - 1)), "fsdp"))
        return NamedSharding(mesh, P())

    for sharding in (NamedSharding(mesh, P()), fsdp,
                     C.unflatten_params({p: fsdp(p, jax.ShapeDtypeStruct(x.shape, x.dtype)) for p, x in ref.items()})):
        got = C.flatten_params(C.restore_params(fixture, sharding=sharding))
        _assert_equal_flat(got, ref)
        q = got["PaliGemma/llm/layers/attn/q_einsum/w"]
        assert isinstance(q, jax.Array) and len(q.sharding.device_set) == 8
        if sharding is not None and not isinstance(sharding, jax.sharding.Sharding):
            assert q.sharding.spec == P(None, None, None, "fsdp")
            assert q.addressable_shards[0].data.shape == q.shape[:-1] + (q.shape[-1] // 4,)
    with pytest.raises(ValueError, match="no sharding given"):
        C.restore_params(fixture, sharding={"action_in_proj": {"kernel": NamedSharding(mesh, P())}})


def test_value_suffix_is_stripped(tmp_path):
    """openpi training checkpoints saved from nnx.State end every path in 'value'."""
    fixture = pathlib.Path(__file__).parents[1] / "fixtures" / "openpi_tiny" / "pi0" / "params"
    ref = C.flatten_params(C.restore_params(fixture))
    wrapped = C.unflatten_params({f"{p}/value": jnp.asarray(x) for p, x in ref.items()})
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(tmp_path / "params", {"params": wrapped})
    _assert_equal_flat(C.flatten_params(C.restore_params(tmp_path / "params")), ref)
    reader = ParamsReader(tmp_path / "params")
    assert sorted(reader.paths) == sorted(ref)
    np.testing.assert_array_equal(reader.read("PaliGemma/llm/layers/mlp/linear", layers=[2]),
                                  ref["PaliGemma/llm/layers/mlp/linear"][[2]])


def test_save_round_trip_and_openpi_reader(tmp_path, fixture_dir):
    ref = C.flatten_params(C.restore_params(fixture_dir / "params"))
    out = C.save_params(C.unflatten_params(ref), tmp_path / "ckpt" / "params")
    assert out == (tmp_path / "ckpt" / "params").resolve()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["params"]  # no temp dirs left
    _assert_equal_flat(C.flatten_params(C.restore_params(out)), ref)
    _assert_equal_flat(_openpi_style_restore(out, np.ndarray), ref)
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
    _assert_equal_flat(_openpi_style_restore(out, jax.Array, NamedSharding(mesh, P())), ref)
    # exactly the leaves openpi wrote, in openpi's item layout
    assert C.params_shapes(out).keys() == C.params_shapes(fixture_dir / "params").keys()


def test_save_is_atomic(tmp_path):
    good = {"a": {"w": np.ones((2, 3), np.float32)}}
    target = C.save_params(good, tmp_path / "params")
    with pytest.raises(ValueError, match="already exists"):
        C.save_params(good, target)
    # overwrite replaces the whole directory
    C.save_params({"b": np.zeros((4,), np.float32)}, target, overwrite=True)
    assert list(C.flatten_params(C.restore_params(target))) == ["b"]
    # a failing save leaves neither the target nor a temp directory behind
    with pytest.raises(Exception):
        C.save_params({"a": {"w": np.ones(2), "bad": object()}}, tmp_path / "broken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params"]
    with pytest.raises(ValueError, match="empty"):
        C.save_params({}, tmp_path / "empty")


def test_validate_params():
    expected = {"a": {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32), "b": np.zeros((4,))},
                "c": jax.ShapeDtypeStruct((5,), jnp.float32)}
    C.validate_params({"a": {"w": np.zeros((2, 3)), "b": np.zeros(4)}, "c": np.zeros(5)}, expected)
    with pytest.raises(ValueError) as e:
        C.validate_params({"a": {"w": np.zeros((3, 2)), "b": np.zeros(4)}, "d": np.zeros(1)}, expected)
    msg = str(e.value)
    assert "missing (1):\n  c (5,)" in msg
    assert "unexpected (1):\n  d (1,)" in msg
    assert "a/w: expected shape (2, 3), got (3, 2)" in msg
    assert "a/b" not in msg
    with pytest.raises(ValueError, match="expected dtype float32, got float64"):
        C.validate_params({"a": {"w": np.zeros((2, 3)), "b": np.zeros(4)}, "c": np.zeros(5)}, expected,
                          check_dtype=True)


def test_reader_leaves_and_slices(fixture_dir):
    ref = C.flatten_params(C.restore_params(fixture_dir / "params"))
    reader = ParamsReader(fixture_dir / "params")
    assert sorted(reader.paths) == sorted(ref)
    for p in reader.paths:
        assert reader.shapes[p].shape == ref[p].shape
        np.testing.assert_array_equal(reader.read(p), ref[p], err_msg=p)
    p = "PaliGemma/llm/layers/attn/kv_einsum_1/w"
    np.testing.assert_array_equal(reader.read(p, layers=[17, 0, 5]), ref[p][[17, 0, 5]])
    bf = reader.read(p, layers=[1], dtype=jnp.bfloat16)
    assert bf.dtype == jnp.bfloat16 and bf.shape == (1,) + ref[p].shape[1:]
    with pytest.raises(ValueError, match="out of range"):
        reader.read(p, layers=[ref[p].shape[0]])
    with pytest.raises(ValueError, match="not a leaf"):
        reader.read("PaliGemma/llm/nope")


def test_reader_streaming_path(fixture_dir):
    """Single-chunk zstd leaves decoded as a stream give exactly tensorstore's values."""
    ref = C.flatten_params(C.restore_params(fixture_dir / "params"))
    reader = ParamsReader(fixture_dir / "params", stream_min_bytes=0)
    p = "PaliGemma/llm/layers/mlp/gating_einsum"
    assert reader._read_streaming(p, reader._open(p), [0]) is not None  # the fixture takes this path
    for p in reader.paths:
        np.testing.assert_array_equal(reader.read(p), ref[p], err_msg=p)
        if ref[p].ndim and ref[p].shape[0] > 1:
            n = ref[p].shape[0]
            for rows in ([n - 1], [0, n // 2, n - 1], [n - 1, 0, 0, 1]):
                np.testing.assert_array_equal(reader.read(p, layers=rows), ref[p][rows], err_msg=f"{p} {rows}")
    got = reader.read(p, layers=[1], dtype=jnp.bfloat16)
    np.testing.assert_array_equal(got, ref[p][[1]].astype(jnp.bfloat16))


def test_digest_and_bad_dirs(tmp_path):
    src = pathlib.Path(__file__).parents[1] / "fixtures" / "openpi_tiny" / "pi0" / "params"
    shutil.copytree(src, tmp_path / "params")
    d1 = C.checkpoint_digest(src)
    assert d1 == C.checkpoint_digest(tmp_path / "params") and len(d1) == 64
    (tmp_path / "params" / "extra").write_bytes(b"x")
    assert C.checkpoint_digest(tmp_path / "params") != d1
    with pytest.raises(ValueError, match="does not exist"):
        C.restore_params(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an orbax params checkpoint"):
        C.restore_params(tmp_path / "empty")
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(tmp_path / "flat", {"w": np.ones(3, np.float32)})
    with pytest.raises(ValueError, match="item {'params': pure dict}"):
        C.restore_params(tmp_path / "flat")


@pytest.mark.parametrize("compress", [False, True])
def test_reader_streaming_multi_chunk(tmp_path, compress):
    """Leaves saved sharded are stored as several chunks: along a later axis (streamed chunk by
    chunk) or along axis 0 (read by tensorstore); both give exact values."""
    # 1-D meshes without replicas: orbax then writes exactly one chunk per shard
    mesh_b = jax.sharding.Mesh(np.array(jax.devices()[:4]), ("b",))
    mesh_a = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("a",))
    rng = np.random.default_rng(0)
    ref = {"PaliGemma/llm/layers/x": rng.normal(size=(6, 3, 8)).astype(np.float32),
           "PaliGemma/llm/layers/y": rng.normal(size=(6, 4, 2)).astype(jnp.bfloat16),
           "emb": rng.normal(size=(7, 8)).astype(np.float32)}
    shardings = {"PaliGemma/llm/layers/x": NamedSharding(mesh_b, P(None, None, "b")),
                 "PaliGemma/llm/layers/y": NamedSharding(mesh_a, P("a")), "emb": NamedSharding(mesh_b, P(None, "b"))}
    C.save_params(C.unflatten_params({p: jax.device_put(x, shardings[p]) for p, x in ref.items()}), tmp_path / "params",
                  compress=compress)
    reader = ParamsReader(tmp_path / "params", stream_min_bytes=0)
    x = "PaliGemma/llm/layers/x"
    meta = reader._open(x).spec().to_json()["metadata"]
    assert meta["chunks"] == [6, 3, 2]
    assert (meta["compressor"] or {}).get("id") == ("zstd" if compress else None)
    assert reader._read_streaming(x, reader._open(x), [0]) is not None
    assert reader._read_streaming("PaliGemma/llm/layers/y", reader._open("PaliGemma/llm/layers/y"), [0]) is None
    for p, v in ref.items():
        np.testing.assert_array_equal(reader.read(p), v, err_msg=p)
        for rows in ([0], [1, 4], [5, 2, 2]):
            np.testing.assert_array_equal(reader.read(p, layers=rows), v[rows], err_msg=f"{p} {rows}")
