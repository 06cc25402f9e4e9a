"""The wire format of openpi's websocket protocol: msgpack with numpy arrays as tagged maps.

An array travels as {b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": shape},
a numpy scalar as {b"__npgeneric__": True, b"data": item, b"dtype": dtype.str} — what
`openpi_client.msgpack_numpy` reads and writes. Kept here so the server needs no openpi-client
(its numpy<2 pin would fight ours).

A client's frame is untrusted: openpi's reader hands the header's dtype straight to numpy, so an
object dtype ("|O") would make the server read client bytes as pointers. `unpackb` decodes the
plain msgpack first and builds an array only after its header passed: a bool, integer or real
float dtype in numpy's `dtype.str` spelling, at most MAX_NDIM sizes, and exactly
prod(shape) × itemsize data bytes. A request holds at most MAX_ITEMS map/list entries, MAX_DEPTH
levels deep. Anything else is a ValueError naming the field.
"""
from __future__ import annotations

import functools
import math
import re

import msgpack
import numpy as np

MAX_NDIM = 32  # numpy's own limit is 64; no observation has more than 4
MAX_DIM = 2**31 - 1
MAX_DEPTH = 32  # nesting of maps and lists in one request
# Map and list entries in one request (an observation has a few dozen; its arrays count as one each):
# without a bound, one 16 MiB frame of 16 million nils keeps the event loop busy for seconds.
MAX_ITEMS = 100_000
# bool, signed / unsigned integers, real floats; byte order prefix optional ("<f4", "|u1", "|b1").
_DTYPE = re.compile(r"[<>|=]?(b1|[iu][1248]|f[248])")
_ACCEPTED = "a bool, integer or real float array (numpy dtype.str such as '<f4')"


def _clip(value, n: int = 60) -> str:
    """A client-supplied value for an error message, cut short (it may be megabytes long)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _encode(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in "OcV":
        raise ValueError(f"cannot send arrays of dtype {obj.dtype} over the wire")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _dtype(header: dict, field: str) -> np.dtype:
    spelled = header.get(b"dtype")
    if not isinstance(spelled, str) or not _DTYPE.fullmatch(spelled):
        raise ValueError(f"{field}: expected {_ACCEPTED}, got dtype {_clip(spelled)}")
    return np.dtype(spelled)


def _array(header: dict, field: str) -> np.ndarray:
    dtype = _dtype(header, field)
    shape, data = header.get(b"shape"), header.get(b"data")
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)):
        raise ValueError(f"{field}: expected an array shape of at most {MAX_NDIM} sizes in [0, {MAX_DIM}], "
                         f"got {_clip(shape)}")
    if not isinstance(data, bytes):
        raise ValueError(f"{field}: expected the array data as bytes, got {type(data).__name__}")
    want = math.prod(shape) * dtype.itemsize
    if len(data) != want:
        raise ValueError(f"{field}: an array of shape {tuple(shape)} {dtype} needs {want} bytes, got {len(data)}")
    # A view of the message's bytes (read-only), as openpi's reader gives.
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _scalar(header: dict, field: str) -> np.generic:
    dtype = _dtype(header, field)
    item = header.get(b"data")
    python_type = {"b": bool, "i": int, "u": int, "f": (int, float)}[dtype.kind]
    if isinstance(item, bool) and dtype.kind != "b" or not isinstance(item, python_type):
        raise ValueError(f"{field}: expected a {dtype} scalar, got {type(item).__name__} {_clip(item)}")
    try:
        return dtype.type(item)
    except (OverflowError, ValueError) as e:  # e.g. 300 as uint8
        raise ValueError(f"{field}: expected a {dtype} scalar, got {_clip(item)} ({e})") from None


def _key(k) -> str:
    return k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)


class _Decoder:
    """One request's walk: arrays built from checked headers, at most MAX_ITEMS entries, MAX_DEPTH deep."""

    def __init__(self):
        self.items_left = MAX_ITEMS

    def decode(self, obj, field: str, depth: int):
        if not isinstance(obj, (dict, list)):
            return obj
        if depth > MAX_DEPTH:
            raise ValueError(f"{_clip(field)}: nested deeper than {MAX_DEPTH} levels")
        self.items_left -= len(obj)
        if self.items_left < 0:
            raise ValueError(f"request: more than {MAX_ITEMS} values in maps and lists (send arrays as numpy arrays)")
        if isinstance(obj, list):
            return [self.decode(v, f"{field}[{i}]", depth + 1) if isinstance(v, (dict, list)) else v
                    for i, v in enumerate(obj)]
        if b"__ndarray__" in obj:
            return _array(obj, _clip(field or "request"))
        if b"__npgeneric__" in obj:
            return _scalar(obj, _clip(field or "request"))
        # "observation/image" or {"observation": {"image": ...}} both name the field observation/image.
        return {k: self.decode(v, f"{field}/{_key(k)}" if field else _key(k), depth + 1) for k, v in obj.items()}


def unpackb(data: bytes):
    """Decode an untrusted msgpack-numpy message; ValueError naming the field if any part is refused."""
    try:
        tree = msgpack.unpackb(data, max_array_len=MAX_ITEMS, max_map_len=MAX_ITEMS)
    except Exception as e:  # noqa: BLE001 - every msgpack failure is the sender's
        detail = f"{type(e).__name__}: {_clip(str(e), 200)}" if str(e) else type(e).__name__
        raise ValueError(f"request: not a msgpack-numpy message ({detail})") from None
    return _Decoder().decode(tree, "", 0)


Packer = functools.partial(msgpack.Packer, default=_encode)
packb = functools.partial(msgpack.packb, default=_encode)
