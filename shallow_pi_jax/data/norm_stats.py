"""Normalisation statistics in openpi's `norm_stats.json` format, and the (un)normalisation maths.

File layout (openpi's, so openpi's assets load here and ours load in openpi):

    {"norm_stats": {"state":   {"mean": [...], "std": [...], "q01": [...], "q99": [...]},
                    "actions": {"mean": [...], "std": [...], "q01": [...], "q99": [...]}}}

z-score (pi0):      (x - mean) / (std + 1e-6)
quantile (pi0.5):   (x - q01) / (q99 - q01 + 1e-6) * 2 - 1
Stats longer than the data (openpi's older assets were computed on 32-dim padded vectors) are sliced
to the data's dims, as openpi does; shorter stats are an error.

`load` refuses a file with NaN/inf or negative std, and, given the model's padded dim or the data's
dims, stats of the wrong size (ValueError naming the file, expected and actual); `save` refuses to
write non-finite stats.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np

from shallow_pi_jax import fileio

EPS = 1e-6
FILE_NAME = "norm_stats.json"


@dataclasses.dataclass(frozen=True)
class NormStats:
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.shape[-1])

    def sliced(self, dim: int, name: str = "stats") -> NormStats:
        if dim > self.dim:
            raise ValueError(f"norm stats '{name}': the data has {dim} dims but the stats only {self.dim}; "
                             "recompute them with shallow_pi_jax.compute_norm_stats")
        cut = lambda a: None if a is None else a[..., :dim]  # noqa: E731
        return NormStats(cut(self.mean), cut(self.std), cut(self.q01), cut(self.q99))

    def to_json(self) -> dict:
        out = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.q01 is not None:
            out["q01"] = self.q01.tolist()
        if self.q99 is not None:
            out["q99"] = self.q99.tolist()
        return out

    @classmethod
    def from_json(cls, d: dict, name: str = "stats") -> NormStats:
        if not isinstance(d, dict):
            raise ValueError(f"norm stats '{name}': expected an object with mean/std/q01/q99, got {type(d).__name__}")
        for key in ("mean", "std"):
            if key not in d:
                raise ValueError(f"norm stats '{name}': missing '{key}' (got keys {sorted(d)})")
        arr = {}
        for key in ("mean", "std", "q01", "q99"):
            try:
                arr[key] = None if d.get(key) is None else np.asarray(d[key], dtype=np.float64)
            except (ValueError, TypeError) as e:
                raise ValueError(f"norm stats '{name}.{key}': expected a list of numbers ({e})") from None
        if arr["mean"].ndim != 1 or arr["mean"].size == 0:
            raise ValueError(f"norm stats '{name}.mean': expected a non-empty list of numbers, got shape "
                             f"{arr['mean'].shape}")
        for key, value in arr.items():
            if value is not None and value.shape != arr["mean"].shape:
                raise ValueError(f"norm stats '{name}.{key}': expected shape {arr['mean'].shape}, got {value.shape}")
        return cls(**arr)


def compute(values: np.ndarray) -> NormStats:
    """mean, std (population), 1 % and 99 % quantiles (numpy's linear interpolation) over all rows."""
    x = np.asarray(values, dtype=np.float64)
    x = x.reshape(-1, x.shape[-1])
    if x.shape[0] == 0:
        raise ValueError("norm stats: no values to compute statistics from")
    return NormStats(
        mean=x.mean(axis=0),
        std=x.std(axis=0),
        q01=np.quantile(x, 0.01, axis=0),
        q99=np.quantile(x, 0.99, axis=0),
    )


def load(path: str | os.PathLike, *, model_dim: int | None = None, state_dim: int | None = None,
         action_dim: int | None = None) -> dict[str, NormStats]:
    """Read an openpi norm_stats.json (a file, or a folder containing one), checked by `check`.

    model_dim: the model's action_dim, to which states and actions are padded (DataConfig.action_dim);
    state_dim / action_dim: the data's own dims, when known. Each is checked when given.
    """
    path = fileio.source(path)
    if path.is_dir():
        path = path / FILE_NAME
    if not path.exists():
        raise ValueError(f"norm_stats_path: file {str(path)!r} does not exist; "
                         "create it with `python -m shallow_pi_jax.compute_norm_stats`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: truncated or corrupt (not valid JSON: {e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("norm_stats"), dict):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a top-level 'norm_stats' object (openpi format), got {got}")
    try:
        stats = {key: NormStats.from_json(value, key) for key, value in data["norm_stats"].items()}
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    check(stats, str(path), model_dim=model_dim, state_dim=state_dim, action_dim=action_dim)
    return stats


def check(stats: dict[str, NormStats], source: str, *, model_dim: int | None = None, state_dim: int | None = None,
          action_dim: int | None = None) -> None:
    """Finite values, std >= 0 and, where given, dims as the transforms use them; else a ValueError naming `source`.

    The transforms slice stats to the data's dims and pad the data to the model's: so stats must cover
    at least the data's dims (state_dim, action_dim), and stats over more dims than `model_dim` belong
    to another model.
    """
    for key, s in stats.items():
        for field in ("mean", "std", "q01", "q99"):
            a = getattr(s, field)
            if a is not None and not np.all(np.isfinite(a)):
                dims = np.flatnonzero(~np.isfinite(a)).tolist()
                raise ValueError(f"{source}: '{key}.{field}' holds NaN/inf at dims {dims[:8]} "
                                 f"({len(dims)} of {a.size}); expected finite values")
        if np.any(s.std < 0):
            raise ValueError(f"{source}: '{key}.std' is negative at dims {np.flatnonzero(s.std < 0).tolist()[:8]}")
        if model_dim is not None and s.dim > model_dim:
            raise ValueError(f"{source}: '{key}' has {s.dim} dims, expected at most the model's action_dim "
                             f"{model_dim} (states and actions are padded to it): stats of another model?")
    for key, need in (("state", state_dim), ("actions", action_dim)):
        if need is not None and key in stats and stats[key].dim < need:
            raise ValueError(f"{source}: '{key}' has {stats[key].dim} dims, expected at least {need} "
                             f"(the data's {key} dims)")


def save(stats: dict[str, NormStats], path: str | os.PathLike) -> pathlib.Path:
    """Write atomically (temp file + rename), so a crash never leaves a half-written file; non-finite
    stats are refused (ValueError) before anything is written."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    check(stats, f"norm stats to write to {path}")
    text = json.dumps({"norm_stats": {k: v.to_json() for k, v in stats.items()}}, indent=2)
    return fileio.write_text(path, text)


def require(stats: dict[str, NormStats], key: str, quantile: bool, source: str) -> NormStats:
    if key not in stats:
        raise ValueError(f"{source}: norm stats have no '{key}' entry (got {sorted(stats)})")
    s = stats[key]
    if quantile and (s.q01 is None or s.q99 is None):
        raise ValueError(f"{source}: quantile normalisation (pi0.5) needs q01/q99 for '{key}', which are missing")
    return s


def normalize(x, s: NormStats, quantile: bool):
    s = s.sliced(x.shape[-1])
    if quantile:
        return ((x - s.q01) / (s.q99 - s.q01 + EPS) * 2.0 - 1.0).astype(np.float32)
    return ((x - s.mean) / (s.std + EPS)).astype(np.float32)


def unnormalize(x, s: NormStats, quantile: bool):
    """Inverse of `normalize` on the first `s.dim` dims; dims beyond the stats pass through."""
    x = np.asarray(x, dtype=np.float32)
    dim = min(s.dim, x.shape[-1])
    s = s.sliced(dim)
    head = x[..., :dim].astype(np.float64)
    if quantile:
        head = (head + 1.0) / 2.0 * (s.q99 - s.q01 + EPS) + s.q01
    else:
        head = head * (s.std + EPS) + s.mean
    return np.concatenate([head.astype(np.float32), x[..., dim:]], axis=-1)
