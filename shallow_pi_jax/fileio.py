"""Atomic writes: a reader sees the old file (or directory) or the complete new one, never a part.

Everything is written to a hidden temporary sibling first and renamed into place, which is atomic
on one filesystem; on any error the temporary is removed and the destination is untouched.

Reads go through `source(path)`, so a checkpoint, norm stats, tokenizer or LeRobot dataset may also
live on a remote filesystem (gs://, s3://, az://, hf://) as with openpi: through etils.epath, the layer
orbax itself reads through (TF's gfile when TensorFlow is installed, else fsspec: gcsfs for gs://).
Nothing is downloaded to a cache; every read goes to the filesystem.
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

from etils import epath

# The URI schemes etils.epath reads; any other "<scheme>://" would silently become a local relative path.
REMOTE_SCHEMES = ("gs", "s3", "az", "hf")


def cache_dir() -> pathlib.Path:
    """The cache of the embedded default: demo data, its norm stats and tokenizer, demo teachers ($SHALLOW_PI_CACHE)."""
    return pathlib.Path(os.environ.get("SHALLOW_PI_CACHE", "~/.cache/shallow_pi_jax")).expanduser()


def is_remote(path) -> bool:
    return "://" in os.fspath(path)


def source(path) -> pathlib.Path | epath.Path:
    """A path to read: local → pathlib.Path (~ expanded); a remote URI (gs://bucket/dir) → epath.Path.
    Both have the pathlib API (exists, is_file, read_bytes, open, /, rglob), so a reader needs no branch."""
    path = os.fspath(path)
    if not is_remote(path):
        return pathlib.Path(path).expanduser()
    scheme = path.split("://", 1)[0]
    if scheme not in REMOTE_SCHEMES:
        raise ValueError(f"{path}: unsupported filesystem {scheme + '://'!r} (expected a local path or one of "
                         f"{', '.join(s + '://' for s in REMOTE_SCHEMES)})")
    return epath.Path(path)


def size(path) -> int:
    """Bytes in a file, local or remote (epath's stat has `length` where os.stat has `st_size`)."""
    p = source(path)
    return p.stat().st_size if isinstance(p, pathlib.Path) else p.stat().length


def files_under(path) -> list:
    """Every file below a directory, local or remote (epath has no recursive glob), sorted."""
    found = []
    for p in source(path).iterdir():
        found += files_under(p) if p.is_dir() else [p]
    return sorted(found)


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


def read_json(path) -> Any:
    """A JSON file's value (pathlib or etils.epath path); a ValueError naming the file if it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: truncated or corrupt (not valid JSON: {e})") from None


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
