"""Atomic writes: a reader sees the old file (or directory) or the complete new one, never a part.

Everything is written to a hidden temporary sibling first and renamed into place, which is atomic
on one filesystem; on any error the temporary is removed and the destination is untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import uuid
from collections.abc import Iterator
from typing import Any


def write_bytes(path, data: bytes) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its 0600 would make every output private; O_EXCL keeps the name ours alone.
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path, text: str) -> pathlib.Path:
    return write_bytes(path, text.encode())


def write_json(path, obj: Any, **kwargs) -> pathlib.Path:
    return write_text(path, json.dumps(obj, indent=1, **kwargs) + "\n")


def replace_dir(tmp: pathlib.Path, dst: pathlib.Path) -> None:
    """Move a fully written `tmp` directory to `dst`, replacing any old `dst` only at the very end."""
    if dst.exists():
        trash = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        dst.rename(trash)
        tmp.rename(dst)
        shutil.rmtree(trash)
    else:
        tmp.rename(dst)


@contextlib.contextmanager
def atomic_dir(dst, *, overwrite: bool = False) -> Iterator[pathlib.Path]:
    """Yield a temporary directory to fill; on success it becomes `dst` (replacing it if `overwrite`)."""
    dst = pathlib.Path(dst).expanduser().absolute()
    if dst.exists() and not overwrite:
        raise ValueError(f"{dst} exists (pass --overwrite to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.{uuid.uuid4().hex[:12]}.tmp"
    tmp.mkdir(mode=0o777)  # the umask applies, as to any directory the user makes (mkdtemp's is 0700)
    try:
        yield tmp
        replace_dir(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
