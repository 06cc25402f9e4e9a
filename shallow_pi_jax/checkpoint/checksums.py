"""Checksums of a policy directory's files, written with it and verified when it is loaded.

    DIR/checksums.json   {"format": ..., "algorithm": "sha256",
                          "files": {"params/_METADATA": {"sha256": "…", "size": 558}, ...}}

It covers everything under params/ and assets/ plus model_config.json, layer_map.json and
policy_record.json, and is written last (atomically), so a directory that has it was complete when
it was sealed. orbax keeps CRCs only for its b-tree nodes: a flipped bit inside a chunk of weights
loads without complaint, which is what this catches. A file the manifest lists that is missing,
resized or changed, or a file under params/ it does not list, is a ValueError naming the file.
Files elsewhere that it does not list (a tokenizer, norm stats added later) are not checked.
openpi's checkpoints carry no manifest: then nothing is verified here (the finite check at load still runs).

Hashing reads files in 4 MiB blocks on a few threads (hashlib releases the GIL), never a whole file.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import pathlib

from shallow_pi_jax import fileio

MANIFEST = "checksums.json"
FORMAT = "shallow_pi_jax.checksums/1"
# The parts of a policy directory the manifest covers (policy_dir's layout; named here so this
# module needs nothing above it).
COVERED_DIRS = ("params", "assets")
COVERED_FILES = ("model_config.json", "layer_map.json", "policy_record.json")
# Under params/ the manifest is exhaustive: a file it does not list is an error.
STRICT_DIR = "params"
_BLOCK = 4 << 20
_SHOW = 5  # mismatches named in one error; the rest are counted


def covered_files(root: pathlib.Path) -> list[str]:
    """Relative posix paths of the files of `root` the manifest covers, sorted."""
    found = [name for name in COVERED_FILES if (root / name).is_file()]
    for d in COVERED_DIRS:
        if (root / d).is_dir():
            found += [p.relative_to(root).as_posix() for p in fileio.files_under(root / d)]
    return sorted(found)


def file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with fileio.source(path).open("rb") as f:  # local or remote (gs://) alike
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _hash_all(root: pathlib.Path, rels: list[str]) -> dict[str, str]:
    workers = max(1, min(8, os.cpu_count() or 1, len(rels)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return dict(zip(rels, pool.map(lambda rel: file_sha256(root / rel), rels)))


def write_manifest(root) -> pathlib.Path:
    """Hash the covered files of `root` and write DIR/checksums.json atomically; returns its path."""
    root = pathlib.Path(root)
    rels = covered_files(root)
    if not any(r.startswith(STRICT_DIR + "/") for r in rels):
        raise ValueError(f"{root}: no {STRICT_DIR}/ files to checksum")
    digests = _hash_all(root, rels)
    files = {rel: {"sha256": digests[rel], "size": (root / rel).stat().st_size} for rel in rels}
    return fileio.write_json(root / MANIFEST, {"format": FORMAT, "algorithm": "sha256", "files": files})


def read_manifest(root) -> dict[str, dict] | None:
    """{relative path: {"sha256", "size"}} from DIR/checksums.json; None when there is none."""
    path = fileio.source(root) / MANIFEST
    if not path.is_file():
        return None
    data = fileio.read_json(path)
    files = data.get("files") if isinstance(data, dict) else None
    if (not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(files, dict)
            or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("size"), int)
                       for v in files.values())):
        raise ValueError(f"{path}: expected a {FORMAT} manifest {{'files': {{path: {{'sha256', 'size'}}}}}}, "
                         f"got {str(data)[:120]}")
    return files


def verify(root, *, hash_params: bool = True) -> bool:
    """Check `root`'s files against its manifest; False if it has none (nothing checked), else True.

    `hash_params=False` is the cheap check: the file set and sizes everywhere, contents only of the
    small files (all but those in params/'s subdirectories, which hold the tensor data). It catches
    a missing, extra or truncated file and broken orbax metadata in milliseconds; the full check
    reads every byte. Raises one ValueError naming each bad file, expected and actual.
    """
    root = fileio.source(root)
    manifest = read_manifest(root)
    if manifest is None:
        return False
    problems = []
    on_disk = set(covered_files(root))
    for rel in sorted(on_disk - set(manifest)):
        if rel.startswith(STRICT_DIR + "/"):
            problems.append(f"{rel}: not in the manifest (extra file, {fileio.size(root / rel)} bytes)")
    to_hash = []
    for rel, want in sorted(manifest.items()):
        if rel not in on_disk:
            problems.append(f"{rel}: missing (expected {want['size']} bytes)")
            continue
        size = fileio.size(root / rel)
        if size != want["size"]:
            problems.append(f"{rel}: expected size {want['size']}, got {size} bytes")
        elif hash_params or not _is_tensor_data(rel):
            to_hash.append(rel)
    for rel, got in _hash_all(root, to_hash).items():
        if got != manifest[rel]["sha256"]:
            problems.append(f"{rel}: expected sha256 {manifest[rel]['sha256']}, got {got}")
    if problems:
        shown = "; ".join(sorted(problems)[:_SHOW])
        more = f"; and {len(problems) - _SHOW} more" if len(problems) > _SHOW else ""
        raise ValueError(f"{root}: {len(problems)} file(s) differ from {MANIFEST}, the copy is corrupt or was "
                         f"changed after it was written (pass --no-checksums to load it anyway): {shown}{more}")
    return True


def _is_tensor_data(rel: str) -> bool:
    # orbax keeps its metadata at the top of params/ and the chunks in subdirectories (d/, ocdbt.process_*/).
    return rel.startswith(STRICT_DIR + "/") and rel.count("/") > 1


def manifest_root(params_dir: pathlib.Path) -> pathlib.Path | None:
    """The policy directory holding `params_dir`'s manifest (its parent), None when it has none."""
    params_dir = fileio.source(params_dir)
    if params_dir.name == STRICT_DIR and (params_dir.parent / MANIFEST).is_file():
        return params_dir.parent
    return None


def verify_params_dir(params_dir, *, hash_params: bool = True) -> bool:
    """verify() the policy directory around a params/ directory; False when there is no manifest."""
    root = manifest_root(params_dir)
    return verify(root, hash_params=hash_params) if root is not None else False
