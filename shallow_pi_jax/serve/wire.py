"""The wire format of openpi's websocket protocol: msgpack with numpy arrays as tagged maps.

An array travels as {b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": shape},
a numpy scalar as {b"__npgeneric__": True, b"data": item, b"dtype": dtype.str} — what
`openpi_client.msgpack_numpy` reads and writes. Kept here so the server needs no openpi-client
(its numpy<2 pin would fight ours); object/complex/void arrays are refused rather than pickled.
"""
from __future__ import annotations

import functools

import msgpack
import numpy as np


def _encode(obj):
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in "OcV":
        raise ValueError(f"cannot send arrays of dtype {obj.dtype} over the wire")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _decode(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


Packer = functools.partial(msgpack.Packer, default=_encode)
packb = functools.partial(msgpack.packb, default=_encode)
unpackb = functools.partial(msgpack.unpackb, object_hook=_decode)
