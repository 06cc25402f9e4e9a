"""openpi parameter checkpoints: restore, save, validate, and read single leaves from disk.

openpi stores parameters as an orbax PyTree checkpoint whose item is `{"params": <pure dict>}`
(`<ckpt>/params/`, next to `<ckpt>/assets/` with the norm stats). Checkpoints written by openpi
training from an `nnx.State` carry an extra trailing `value` key on every leaf; it is stripped here
so every function sees and returns the pure dict, with paths like
`PaliGemma/llm/layers/attn/q_einsum/w`.

    params = restore_params("pi05_base/params", dtype=jnp.bfloat16)
    params = restore_params("pi05_base/params", sharding=NamedSharding(mesh, P()))
    save_params(params, "out/params")              # openpi's restore_params reads it back
    reader = ParamsReader("pi05_base/params")      # one leaf (or a few layers of one) at a time
    q = reader.read("PaliGemma/llm/layers/attn/q_einsum/w", layers=[0, 3, 7])

A checkpoint fine-tuned with LoRA (openpi's `*_lora` variants) is read as the plain tree it stands
for: `params_shapes`, `restore_params` and `ParamsReader` merge each LoRA pair into its weight
(lora.py) and show no LoRA leaves.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from shallow_pi_jax import fileio
from shallow_pi_jax.checkpoint import checksums, lora

log = logging.getLogger(__name__)

SEP = "/"
_VALUE_KEY = "value"


# ----------------------------------------------------------------------------- pure-dict helpers

def flatten_params(tree: Mapping, sep: str = SEP) -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a/b": x}. Leaves are anything that is not a Mapping."""
    flat: dict[str, Any] = {}

    def visit(node, prefix):
        if isinstance(node, Mapping) or _is_tree_metadata(node):
            for k, v in node.items():
                visit(v, f"{prefix}{sep}{k}" if prefix else str(k))
        else:
            flat[prefix] = node

    if not (isinstance(tree, Mapping) or _is_tree_metadata(tree)):
        raise ValueError(f"params: expected a nested dict, got {type(tree).__name__}")
    visit(tree, "")
    return flat


def unflatten_params(flat: Mapping[str, Any], sep: str = SEP) -> dict:
    """Inverse of flatten_params."""
    tree: dict = {}
    for path, leaf in flat.items():
        keys = path.split(sep)
        node = tree
        for i, k in enumerate(keys[:-1]):
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"param path conflict: {sep.join(keys[:i + 1])!r} is both a leaf and a prefix")
        if keys[-1] in node:
            raise ValueError(f"param path conflict: {path!r} is both a leaf and a prefix")
        node[keys[-1]] = leaf
    return tree


def _is_tree_metadata(node) -> bool:
    # orbax returns its own Mapping-like container for checkpoint metadata.
    return hasattr(node, "items") and hasattr(node, "tree") and not hasattr(node, "shape")


def strip_value_suffix(flat: dict[str, Any]) -> dict[str, Any]:
    suffix = SEP + _VALUE_KEY
    if flat and all(p.endswith(suffix) for p in flat):
        return {p[: -len(suffix)]: v for p, v in flat.items()}
    return flat


# ----------------------------------------------------------------------------- locating a checkpoint

def resolve_params_dir(path: str | os.PathLike) -> pathlib.Path:
    """Accept `<ckpt>/params` or `<ckpt>` itself; return the orbax directory holding `_METADATA`.

    A remote checkpoint (gs://bucket/ckpt) is read in place through fileio.source, as orbax reads it."""
    p = fileio.source(path)
    if not fileio.is_remote(p):
        p = p.resolve()
    if (p / "_METADATA").is_file():
        return p
    if (p / "params" / "_METADATA").is_file():
        return p / "params"
    if not p.exists():
        raise ValueError(f"params_dir: {str(path)!r} does not exist")
    if (p / "params").is_dir() or any((p / f).is_file() for f in ("model_config.json", checksums.MANIFEST)):
        # A policy directory whose params/ is gone or lost its metadata: name what is missing.
        what = "params/_METADATA is missing" if (p / "params").is_dir() else "params/ is missing"
        raise ValueError(f"params_dir: {p}: {what} (incomplete or corrupt policy directory)")
    raise ValueError(
        f"params_dir: {str(path)!r} is not an orbax params checkpoint (no _METADATA there or in "
        f"params/); pass an openpi checkpoint's params/ directory")


def stored_metadata(params_dir: pathlib.Path) -> dict[str, Any]:
    """{stored path: orbax ArrayMetadata} for the leaves under the item's 'params' key.

    A truncated or garbled `_METADATA` / `manifest.ocdbt`, or data files orbax cannot read, raise a
    one-line ValueError naming the file (orbax's checkpointer would log and return None instead).
    """
    _check_metadata_files(params_dir)
    # The handler, not PyTreeCheckpointer.metadata: that one swallows the reason and returns None.
    handler = ocp.PyTreeCheckpointHandler()
    try:
        item = handler.metadata(params_dir)
    except (ValueError, OSError, TypeError, KeyError) as e:
        raise ValueError(f"{params_dir}: orbax cannot read the checkpoint metadata: {error_summary(e)}") from e
    finally:
        handler.close()
    if item is None or not hasattr(item, "keys"):
        raise ValueError(f"{params_dir}: orbax found no checkpoint metadata (corrupt or incomplete checkpoint)")
    top = list(item.keys())
    if "params" not in top:
        raise ValueError(
            f"{params_dir}: expected openpi's layout, an item {{'params': pure dict}}; found "
            f"top-level keys {top}")
    return flatten_params(item["params"])


def _check_metadata_files(params_dir: pathlib.Path) -> None:
    meta = params_dir / "_METADATA"
    try:
        data = json.loads(meta.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{meta}: missing (incomplete checkpoint)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta}: truncated or corrupt ({fileio.size(meta)} bytes, not valid JSON: {e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tree_metadata"), dict):
        raise ValueError(f"{meta}: not orbax tree metadata (expected a 'tree_metadata' object, got "
                         f"{sorted(data) if isinstance(data, dict) else type(data).__name__})")
    manifest = params_dir / "manifest.ocdbt"
    if manifest.is_file() and fileio.size(manifest) == 0:
        raise ValueError(f"{manifest}: empty (0 bytes; truncated or corrupt checkpoint)")


def error_summary(e: BaseException) -> str:
    """tensorstore's message without its multi-kilobyte spec dump, on one line."""
    text = str(e).split(" [tensorstore_spec=")[0]
    return " ".join(text.split()) or type(e).__name__


def params_shapes(params_dir: str | os.PathLike) -> dict:
    """Pure-dict tree of jax.ShapeDtypeStruct for a checkpoint, read from metadata only.

    LoRA leaves are checked against their weights and left out: the tree is the merged one that
    restore_params returns (a weight keeps its shape and dtype when its pair is merged in)."""
    meta = strip_value_suffix(stored_metadata(resolve_params_dir(params_dir)))
    pairs = lora.find_pairs({p: tuple(m.shape) for p, m in meta.items()})
    hidden = {p for pair in pairs.values() for p in (pair.a, pair.b)}
    return unflatten_params({p: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype) for p, m in meta.items()
                             if p not in hidden})


# ----------------------------------------------------------------------------- restore / save

ShardingSpec = jax.sharding.Sharding | Mapping | Callable[[str, jax.ShapeDtypeStruct], jax.sharding.Sharding]


def restore_params(params_dir: str | os.PathLike, dtype=None, sharding: ShardingSpec | None = None, *,
                   verify: bool = True, check_finite: bool = True,
                   lora_alpha: float | Mapping[int, float] | None = None) -> dict:
    """Read openpi params as a pure dict, with any LoRA pairs merged into their weights.

    Args:
      params_dir: `<ckpt>/params` (or `<ckpt>`), an orbax checkpoint with item {"params": ...}.
      dtype: cast every leaf to this dtype while reading (e.g. jnp.bfloat16); None keeps the stored one.
      sharding: None returns host numpy arrays. Otherwise jax.Arrays placed as asked, each device
        reading only its own shard from disk: one `jax.sharding.Sharding` for every leaf, a pure-dict
        pytree of shardings, or a callable `(path, jax.ShapeDtypeStruct) -> Sharding`.
      verify: when the directory around params/ has a checksums.json (policy directories this
        project writes), check every file against it first (checksums.py; every host reads every
        byte). openpi's checkpoints have none: nothing to check then.
      check_finite: raise a ValueError naming the leaf if any restored value is NaN or inf.
      lora_alpha: LoRA's alpha (one value, or {rank: alpha}); None: openpi's variants (alpha =
        rank). Each weight w with a pair becomes w + dW in float32, cast back to w's dtype (the
        one asked for, else the stored one); the LoRA leaves are read in float32 and dropped.
    """
    params_dir = resolve_params_dir(params_dir)
    if verify:
        checksums.verify_params_dir(params_dir)
    stored = stored_metadata(params_dir)
    pure_of = dict(zip(stored, strip_value_suffix(dict.fromkeys(stored)).keys()))
    pure_meta = {pure_of[p]: m for p, m in stored.items()}
    pairs = lora.find_pairs({p: tuple(m.shape) for p, m in pure_meta.items()})
    lora_leaves = {p: pair.weight for pair in pairs.values() for p in (pair.a, pair.b)}
    if pairs:  # an alpha missing for a rank is an error before anything is read
        lora.describe(pairs, lora_alpha)
    shardings = _leaf_shardings(sharding, pure_meta, dtype, lora_leaves)

    def args_for(path, meta):
        # LoRA leaves are small; float32 keeps the merge exact whatever `dtype` asks of the weights.
        leaf_dtype = np.float32 if pure_of[path] in lora_leaves else dtype
        if sharding is None:
            return ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf_dtype)
        return ocp.ArrayRestoreArgs(restore_type=jax.Array, sharding=shardings[pure_of[path]],
                                    global_shape=tuple(meta.shape), dtype=leaf_dtype)

    item = {"params": unflatten_params(stored)}
    restore_args = {"params": unflatten_params({p: args_for(p, m) for p, m in stored.items()})}
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            restored = ckptr.restore(params_dir, ocp.args.PyTreeRestore(item=item, restore_args=restore_args))
    except (ValueError, OSError) as e:
        raise ValueError(f"{params_dir}: orbax cannot restore the params: {error_summary(e)}") from e
    flat = strip_value_suffix(flatten_params(restored["params"]))
    if check_finite:
        assert_finite(flat, str(params_dir))
    if pairs:
        # The restored arrays are ours: numpy weights are merged in place, one layer at a time.
        flat, _ = lora.merge_lora(flat, alpha=lora_alpha, in_place=True)
        log.info("%s: %s", params_dir, lora.describe(pairs, lora_alpha))
    return unflatten_params(flat)


def _leaf_shardings(sharding, meta: dict[str, Any], dtype,
                    lora_leaves: Mapping[str, str] | None = None) -> dict[str, jax.sharding.Sharding]:
    """A sharding per stored leaf. `lora_leaves` ({LoRA leaf: its weight}) may be absent from a
    pytree of shardings built for the plain model: they are then replicated on their weight's mesh."""
    lora_leaves = lora_leaves or {}
    if sharding is None:
        return {}
    if isinstance(sharding, jax.sharding.Sharding):
        return dict.fromkeys(meta, sharding)
    if callable(sharding) and not isinstance(sharding, Mapping):
        leaf_dtype = {p: np.float32 if p in lora_leaves else dtype or m.dtype for p, m in meta.items()}
        return {p: sharding(p, jax.ShapeDtypeStruct(tuple(m.shape), leaf_dtype[p])) for p, m in meta.items()}
    if isinstance(sharding, Mapping):
        flat = flatten_params(sharding)
        missing = sorted(set(meta) - set(flat) - set(lora_leaves))
        if missing:
            raise ValueError(f"sharding: no sharding given for {len(missing)} leaves, e.g. {missing[:5]}")
        bad = [p for p in meta if p in flat and not isinstance(flat[p], jax.sharding.Sharding)]
        if bad:
            raise ValueError(f"sharding: expected jax.sharding.Sharding leaves, got "
                             f"{type(flat[bad[0]]).__name__} at {bad[0]!r}")
        out = {p: flat[p] for p in meta if p in flat}
        for p in meta:
            if p not in out:
                out[p] = _replicated(out[lora_leaves[p]], p)
        return out
    raise ValueError(f"sharding: expected a Sharding, a pytree of them or a callable, got {type(sharding).__name__}")


def _replicated(sharding: jax.sharding.Sharding, path: str) -> jax.sharding.Sharding:
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    if sharding.is_fully_replicated:
        return sharding
    raise ValueError(f"sharding: no sharding given for the LoRA leaf {path!r}, and its weight's "
                     f"{type(sharding).__name__} has no mesh to replicate it on; give one")


def save_params(params: Mapping, params_dir: str | os.PathLike, *, overwrite: bool = False,
                compress: bool = False) -> pathlib.Path:
    """Write `params` (pure dict of numpy or jax arrays) as openpi does: item {"params": params}.

    Atomic: the checkpoint is written to a temporary sibling directory and renamed into place, so
    `params_dir` either does not exist or is complete. Same orbax format as openpi's (OCDBT, zarr
    v2); chunks are stored uncompressed unless `compress` (zstd, as openpi's own saves), because
    compressing costs memory of the order of the whole tree during the save; the price is larger
    files. Every orbax reader, openpi's restore_params included, reads both. numpy leaves are put
    on the CPU device first, which reuses their buffer when it is 64-byte aligned and copies it
    otherwise (make_student reads into aligned buffers for that reason).
    """
    params_dir = pathlib.Path(params_dir).expanduser().resolve()
    flat = flatten_params(params)
    if not flat:
        raise ValueError("params: nothing to save (empty tree)")
    if params_dir.exists() and not overwrite:
        raise ValueError(f"params_dir: {params_dir} already exists (pass overwrite=True to replace it)")
    params_dir.parent.mkdir(parents=True, exist_ok=True)
    # openpi writes jax.Arrays (value_type 'jax.Array' plus a _sharding entry); host numpy leaves
    # are placed on the CPU device, which on CPU reuses the buffer instead of copying it.
    cpu = jax.devices("cpu")[0]
    flat = {p: v if isinstance(v, jax.Array) else jax.device_put(np.asarray(v), cpu) for p, v in flat.items()}
    tree = unflatten_params(flat)  # plain dicts only: orbax keys its metadata on container types
    if jax.process_count() > 1:
        # orbax coordinates hosts and does its own temp-dir + rename; a second rename would race.
        with _bounded_checkpointer(flat, compress) as ckptr:
            ckptr.save(params_dir, args=ocp.args.PyTreeSave({"params": tree}), force=overwrite)
        return params_dir
    tmp = params_dir.parent / f".{params_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with _bounded_checkpointer(flat, compress) as ckptr:
            ckptr.save(tmp, args=ocp.args.PyTreeSave({"params": tree}))
        fileio.replace_dir(tmp, params_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return params_dir


def _bounded_checkpointer(flat: Mapping[str, Any], compress: bool) -> ocp.Checkpointer:
    """An orbax checkpointer (OCDBT, zarr v2, like openpi's) that stages about one leaf at a time.

    Left to itself orbax stages a host copy of every array and, with compression, tensorstore holds
    compressed copies of many chunks at once: saving a 3.3 GiB tree peaked at 5.9 GiB. With
    in-flight bytes limited to the largest leaf (orbax refuses a smaller limit) and no
    compression, the same save adds under 0.1 GiB.
    """
    largest = max(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize for x in flat.values())
    limit = max(largest + (1 << 20), 256 << 20)
    impl = ocp.BasePyTreeCheckpointHandler(save_concurrent_bytes=limit, save_device_host_concurrent_bytes=limit,
                                           use_ocdbt=True, use_compression=compress)
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(handler_impl=impl))


# ----------------------------------------------------------------------------- validation

def validate_params(params: Mapping, expected: Mapping, *, check_dtype: bool = False) -> None:
    """Raise one ValueError listing missing, unexpected and mis-shaped leaves ('/'-joined paths).

    `expected` is a pytree of jax.ShapeDtypeStruct or arrays (anything with .shape / .dtype), e.g.
    `jax.eval_shape(model.init, ...)["params"]` or `params_shapes(dir)`.
    """
    got, want = flatten_params(params), flatten_params(expected)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    problems = []
    for p in sorted(set(want) & set(got)):
        gs, ws = tuple(np.shape(got[p])), tuple(want[p].shape)
        if gs != ws:
            problems.append(f"  {p}: expected shape {ws}, got {gs}")
        elif check_dtype and np.dtype(got[p].dtype) != np.dtype(want[p].dtype):
            problems.append(f"  {p}: expected dtype {np.dtype(want[p].dtype)}, got {np.dtype(got[p].dtype)}")
    if not (missing or unexpected or problems):
        return
    lines = ["params do not match the expected tree:"]
    if missing:
        lines += [f"missing ({len(missing)}):"] + [f"  {p} {tuple(want[p].shape)}" for p in missing]
    if unexpected:
        lines += [f"unexpected ({len(unexpected)}):"] + [f"  {p} {tuple(np.shape(got[p]))}" for p in unexpected]
    if problems:
        lines += [f"mismatched ({len(problems)}):"] + problems
    raise ValueError("\n".join(lines))


# ----------------------------------------------------------------------------- finite values

def _count_nonfinite_host(x: np.ndarray) -> int:
    # Blocks keep the temporary boolean mask small next to a multi-GB leaf.
    flat, block, bad = np.ascontiguousarray(x).reshape(-1), 1 << 24, 0
    for i in range(0, flat.size, block):
        bad += int(np.count_nonzero(~np.isfinite(flat[i:i + block])))
    return bad


@jax.jit
def _count_nonfinite_device(leaves: dict) -> dict:
    # int32 is enough: the largest openpi leaf has ~1.2e9 values (< 2**31).
    return {p: jnp.sum(~jnp.isfinite(x), dtype=jnp.int32) for p, x in leaves.items()}


def count_nonfinite(flat: Mapping[str, Any]) -> dict[str, int]:
    """{path: number of NaN/inf values} for the floating-point leaves that have any.

    Accelerator jax.Arrays are counted on their devices in one jitted call (sharded leaves stay
    sharded); numpy leaves and CPU arrays on the host in blocks (XLA's CPU bfloat16 isfinite is
    ~5x slower than numpy's)."""
    floating = {p: x for p, x in flat.items() if jnp.issubdtype(np.dtype(x.dtype), jnp.inexact)}
    groups: dict[frozenset, dict] = {}  # one jit call per device set (jit refuses to mix them)
    for p, x in floating.items():
        if isinstance(x, jax.Array) and not (x.is_fully_addressable
                                             and all(d.platform == "cpu" for d in x.sharding.device_set)):
            groups.setdefault(frozenset(x.sharding.device_set), {})[p] = x
    counts = {}
    for leaves in groups.values():
        counts.update({p: int(n) for p, n in jax.device_get(_count_nonfinite_device(leaves)).items()})
    counts.update({p: _count_nonfinite_host(np.asarray(x)) for p, x in floating.items() if p not in counts})
    return {p: n for p, n in sorted(counts.items()) if n}


def assert_finite(params: Mapping, where: str) -> None:
    """One ValueError naming `where` (the params dir) and each leaf holding NaN or inf, with counts."""
    flat = params if all(not isinstance(v, Mapping) for v in params.values()) else flatten_params(params)
    bad = count_nonfinite(flat)
    if bad:
        shown = ", ".join(f"{p} ({n} of {int(np.prod(np.shape(flat[p])))})" for p, n in list(bad.items())[:5])
        more = f" and {len(bad) - 5} more leaves" if len(bad) > 5 else ""
        raise ValueError(f"{where}: {len(bad)} parameter leaves hold NaN/inf values: {shown}{more}")


# ----------------------------------------------------------------------------- provenance

def checkpoint_digest(params_dir: str | os.PathLike, progress: Callable[[int], Any] | None = None) -> str:
    """sha256 over every file of a checkpoint directory: relative path, size, bytes, in sorted order.

    `progress(nbytes)` is called as bytes are hashed (e.g. tqdm.update).
    """
    root = resolve_params_dir(params_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = f.relative_to(root).as_posix()
        h.update(f"{rel}\0{f.stat().st_size}\0".encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
                if progress is not None:
                    progress(len(chunk))
    return h.hexdigest()


def directory_size(params_dir: str | os.PathLike) -> int:
    root = resolve_params_dir(params_dir)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
