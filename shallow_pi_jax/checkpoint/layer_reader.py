"""Read one leaf, or some layers of a stacked leaf, of an openpi params checkpoint without the rest.

What make_student and export_torch use to keep memory near the size of their output. tensorstore
reads whole storage chunks, and orbax stores a leaf saved from one device as one chunk spanning every
layer; decoding a 2 GB chunk to keep 6 of its 18 layers would cost twice the leaf. So large zarr
leaves are decoded here as a byte stream (zstd or raw), keeping only the requested rows; tensorstore
still opens every leaf, reads the small ones and anything stored another way, and provides the byte
ranges. The kvstore API gives a value's bytes but not its size, hence the search in `_value_size`.
A LoRA fine-tuned checkpoint is read as its merged tree: a weight with a LoRA pair comes back as
w + dW (lora.py), for just the layers asked for, and the LoRA leaves are not listed.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import logging
import os
from collections.abc import Iterable, Mapping

import jax
import numpy as np
import tensorstore as ts
import zstandard

from shallow_pi_jax import fileio
from shallow_pi_jax.checkpoint import checksums, lora
from shallow_pi_jax.checkpoint.openpi_params import (
    count_nonfinite,
    error_summary,
    resolve_params_dir,
    stored_metadata,
    strip_value_suffix,
)

log = logging.getLogger(__name__)


class ParamsReader:
    """Read one leaf, or some layers of a stacked leaf, straight from an orbax checkpoint.

    Goes through tensorstore, so memory is the requested slice plus the storage chunks it touches
    (orbax writes one chunk per saved shard). A leaf saved from one device is one chunk (split
    along later axes past 2 GB), and decoding a 2 GB chunk to keep 6 of its 18 layers would cost
    twice the leaf. So leaves of at least `stream_min_bytes` stored as zarr chunks spanning axis 0
    (orbax's default; zstd or uncompressed) are decoded as a stream, keeping only the requested
    rows: memory is the result plus ~8 MB (or one chunk row if larger). make_student uses this.

    `verify`: when the directory around params/ has a checksums.json (policy directories this
    project writes; openpi's have none), every file is checked against it on opening.
    `check_finite`: every array `read` returns is checked for NaN/inf (ValueError naming the leaf).
    `lora_alpha`: LoRA's alpha for a LoRA fine-tuned checkpoint (as openpi_params.restore_params;
    None: openpi's variants). `paths` and `shapes` are then the merged tree's, and reading a
    weight with a LoRA pair returns it merged.
    """

    def __init__(self, params_dir: str | os.PathLike, stream_min_bytes: int = 64 << 20, *,
                 verify: bool = True, check_finite: bool = True,
                 lora_alpha: float | Mapping[int, float] | None = None):
        self.directory = resolve_params_dir(params_dir)
        self.stream_min_bytes = stream_min_bytes
        self.check_finite = check_finite
        if verify:
            checksums.verify_params_dir(self.directory)
        stored = stored_metadata(self.directory)
        pure = strip_value_suffix(dict.fromkeys(stored))
        self._names = {p: m.name for p, m in zip(pure, stored.values())}
        self._stored = {p: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype) for p, m in zip(pure, stored.values())}
        self.lora = lora.find_pairs({p: s.shape for p, s in self._stored.items()})
        self.lora_scales = {w: lora.scale_of(pair, lora_alpha) for w, pair in self.lora.items()}
        hidden = {p for pair in self.lora.values() for p in (pair.a, pair.b)}
        self.shapes = {p: s for p, s in self._stored.items() if p not in hidden}
        if self.lora:
            log.info("%s: %s", self.directory, lora.describe(self.lora, lora_alpha))
        meta_json = json.loads((self.directory / "_METADATA").read_text())
        self._driver = "zarr3" if meta_json.get("use_zarr3") else "zarr"
        self._ocdbt = (self.directory / "manifest.ocdbt").is_file()

    @property
    def paths(self) -> list[str]:
        return list(self.shapes)

    def _kvstore_spec(self, path: str) -> dict | str:
        if path not in self._names:
            raise ValueError(f"path: {path!r} is not a leaf of {self.directory}")
        name = self._names[path]
        # tensorstore reads kvstore URLs: file:// here, gs:// or s3:// for a checkpoint in a bucket.
        base = str(self.directory) if fileio.is_remote(self.directory) else f"file://{self.directory}"
        if self._ocdbt:
            return {"driver": "ocdbt", "base": base, "path": f"{name}/"}
        return f"{base}/{name}/"

    def _open(self, path: str):
        kvstore = self._kvstore_spec(path)
        # No chunk cache: each chunk is decoded once for the read and then dropped.
        ctx = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
        try:
            return ts.open({"driver": self._driver, "kvstore": kvstore}, open=True, read=True, context=ctx).result()
        except ValueError as e:  # tensorstore reports unreadable / corrupt storage as ValueError
            raise ValueError(f"{self.directory}: cannot open leaf {path!r}: {error_summary(e)}") from e

    def _read_streaming(self, path: str, store, rows: list[int]) -> np.ndarray | None:
        """Rows of axis 0 of a zarr v2 leaf (zstd or uncompressed) whose chunks each span all of
        axis 0 (orbax's layout for a leaf saved from one device; it splits only chunks over 2 GB,
        along later axes), decoded chunk by chunk as a stream. None if stored any other way (then
        tensorstore reads it)."""
        meta = store.spec().to_json().get("metadata", {})
        shape, chunks = tuple(store.shape), tuple(meta.get("chunks", ()))
        dtype = np.dtype(store.dtype.numpy_dtype)
        compressor = (meta.get("compressor") or {}).get("id")
        if (self._driver != "zarr" or not shape or len(chunks) != len(shape) or chunks[0] != shape[0]
                or compressor not in ("zstd", None) or meta.get("filters")
                or meta.get("order") != "C" or dtype.byteorder == ">"):
            return None

        kv = ts.KvStore.open(self._kvstore_spec(path)).result()
        sep = meta.get("dimension_separator", ".")
        out = _aligned_empty((len(rows),) + shape[1:], dtype)
        targets: dict[int, list[int]] = {}
        for j, i in enumerate(rows):
            targets.setdefault(i, []).append(j)
        last = max(rows) + 1
        row_shape = chunks[1:]  # zarr v2 stores edge chunks padded to the full chunk shape
        row_bytes = int(np.prod(row_shape)) * dtype.itemsize
        block = max(1, min(last, (8 << 20) // max(row_bytes, 1)))
        scratch = np.empty((block,) + row_shape, dtype)
        grid = [range(-(-s // c)) for s, c in zip(shape[1:], chunks[1:])]
        for cell in itertools.product(*grid):
            source = _KvValueFile(kv, sep.join(["0"] + [str(c) for c in cell]))
            if source.size == 0:
                return None  # chunk not stored (all fill value): let tensorstore fill it
            region = tuple(slice(c * k, min((c + 1) * k, s)) for c, k, s in zip(cell, chunks[1:], shape[1:]))
            valid = tuple(slice(0, r.stop - r.start) for r in region)
            with _decoded(source, compressor) as stream:
                for i0 in range(0, last, block):
                    n = min(block, last - i0)
                    _read_exactly(stream, memoryview(scratch[:n].reshape(-1).view(np.uint8)), path)
                    for r in range(n):
                        for j in targets.get(i0 + r, ()):
                            out[(j,) + region] = scratch[(r,) + valid]
        return out

    def read(self, path: str, layers: Iterable[int] | None = None, dtype=None) -> np.ndarray:
        """The leaf at `path` as numpy; with `layers`, only those indices of axis 0, in that order.

        A weight with a LoRA pair is read with the pair's same layers and merged in float32, then
        cast to `dtype` (default: the weight's stored dtype)."""
        if path not in self.shapes:
            what = "a LoRA leaf, merged into its weight on reading" if path in self._stored else "not a leaf"
            raise ValueError(f"path: {path!r} is {what} of {self.directory}")
        layers = None if layers is None else [int(i) for i in layers]
        pair = self.lora.get(path)
        if pair is None:
            return self._read_stored(path, layers, dtype)
        # float32 holds any stored float exactly, so the merge is rounded once, into the result.
        w, a, b = (self._read_stored(p, layers, np.float32) for p in (path, pair.a, pair.b))
        w = lora.merge_pair(w, a, b, pair, self.lora_scales[path], in_place=True)
        want = self._stored[path].dtype if dtype is None else np.dtype(dtype)
        if want == w.dtype:
            return w
        out = _aligned_empty(w.shape, want)
        out[...] = w
        return out

    def _read_stored(self, path: str, layers: list[int] | None, dtype) -> np.ndarray:
        store = self._open(path)
        if layers is not None:
            n = store.shape[0] if store.ndim else 0
            bad = [i for i in layers if not 0 <= i < n]
            if bad:
                raise ValueError(f"layers: {bad} out of range for {path!r} with axis 0 of size {n}")
        out = None
        leaf_bytes = int(np.prod(store.shape)) * np.dtype(store.dtype.numpy_dtype).itemsize
        try:
            if store.ndim and leaf_bytes >= self.stream_min_bytes and (layers is None or layers):
                rows = list(range(store.shape[0])) if layers is None else layers
                out = self._read_streaming(path, store, rows)
            if out is None:
                out = np.asarray((store if layers is None else store[layers]).read().result())
        except (ValueError, OSError, zstandard.ZstdError) as e:
            if str(e).startswith(f"{path}: "):  # ours (_read_exactly), already names the leaf
                raise ValueError(f"{self.directory}: {e}") from e
            raise ValueError(f"{self.directory}: cannot read leaf {path!r}: {error_summary(e)}") from e
        want = self._stored[path].dtype if dtype is None else np.dtype(dtype)
        out = out if out.dtype == want else out.astype(want)
        if self.check_finite:
            bad = count_nonfinite({path: out})
            if bad:
                raise ValueError(f"{self.directory}: leaf {path!r}{'' if layers is None else f' layers {layers}'} "
                                 f"holds {bad[path]} NaN/inf values of {out.size}")
        return out


class _KvValueFile(io.RawIOBase):
    """A read-only file over one kvstore value, fetched in byte ranges (never whole)."""

    def __init__(self, kv, key: str):
        self._kv, self._key, self._pos = kv, key, 0
        self.size = self._value_size()

    def _has_byte(self, offset: int) -> bool:
        try:
            r = self._kv.read(self._key, byte_range=slice(offset, offset + 1)).result()
        except ValueError:  # OUT_OF_RANGE past the end of the value
            return False
        return r.state == "value" and len(r.value) == 1

    def _value_size(self) -> int:
        # kvstores expose no size without reading the value: search for the last valid offset.
        if not self._has_byte(0):
            return 0
        lo, hi = 0, 1
        while self._has_byte(hi):
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._has_byte(mid) else (lo, mid)
        return lo + 1

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self._pos)
        if n <= 0:
            return 0
        data = self._kv.read(self._key, byte_range=slice(self._pos, self._pos + n)).result().value
        buf[:n] = data
        self._pos += n
        return n


@contextlib.contextmanager
def _decoded(source: _KvValueFile, compressor: str | None):
    """A readable stream of a chunk's decoded bytes."""
    if compressor is None:
        yield source
        return
    with zstandard.ZstdDecompressor().stream_reader(source, read_size=8 << 20) as stream:
        yield stream


def _aligned_empty(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
    """np.empty on a 64-byte boundary, so jax.device_put to CPU can use the buffer without a copy."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _read_exactly(stream, view: memoryview, path: str) -> None:
    got = 0
    while got < len(view):
        n = stream.readinto(view[got:])
        if not n:
            raise ValueError(f"{path}: stored chunk ended early (truncated or corrupt checkpoint)")
        got += n
