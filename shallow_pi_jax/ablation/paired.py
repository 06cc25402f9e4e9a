"""Paired statistics for models evaluated on the same episodes.

Every model of the ablation runs the same evaluation episodes (reset seeds eval_seed + i), so two
models' outcomes on episode i are a pair: much of an episode's difficulty is shared, and a paired
comparison sees differences an unpaired one (two independent Wilson intervals) hides.

- `paired_bootstrap`: the difference of success rates between two arms with a 95 % interval. It
  resamples the episodes (the same draw for both arms: that is the pairing) and, inside each arm,
  its training seeds, so the interval covers the spread over episodes and over training seeds.
- `mcnemar_exact`: the two-sided exact McNemar test on seed-matched pairs (arm seed s vs reference
  seed s, same episode), from the discordant counts alone.
"""
from __future__ import annotations

import math

import numpy as np


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b pairs where only the first model succeeded, c where only
    the second did. Under 'no difference' each discordant pair is a fair coin, so
    p = min(1, 2 · P[Binomial(b + c, 1/2) <= min(b, c)])."""
    if b < 0 or c < 0 or int(b) != b or int(c) != c:
        raise ValueError(f"mcnemar_exact: expected non-negative integer counts, got b={b}, c={c}")
    n, k = int(b) + int(c), min(int(b), int(c))
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _outcomes(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{name}: expected outcomes shaped [seeds, episodes], got shape {np.shape(x)}")
    if not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{name}: expected 0/1 outcomes, got values {sorted(set(a.ravel().tolist()))[:5]}")
    return a


def paired_bootstrap(arm, ref, reps: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Success rate of `arm` minus that of `ref`, both [seeds, episodes] 0/1 outcomes on the same
    episodes (column i = the same evaluation episode in both). Returns {"diff", "ci", "reps"}:
    the observed difference and its percentile interval."""
    a, r = _outcomes(arm, "arm"), _outcomes(ref, "ref")
    if a.shape[1] != r.shape[1]:
        raise ValueError(f"paired_bootstrap: the arms must share their episodes; got {a.shape[1]} and "
                         f"{r.shape[1]} episodes")
    if reps < 100 or not 0 < level < 1:
        raise ValueError(f"paired_bootstrap: expected reps >= 100 and 0 < level < 1, got {reps}, {level}")
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    diffs = np.empty(reps)
    for start in range(0, reps, 1000):  # chunks keep the index arrays small at any episode count
        m = min(1000, reps - start)
        eps = rng.integers(0, n, (m, n))
        # Seeds are drawn per replicate (not per episode): a training seed is one whole model.
        sa = rng.integers(0, a.shape[0], (m, a.shape[0]))
        sr = rng.integers(0, r.shape[0], (m, r.shape[0]))
        rate_a = a[sa[:, :, None], eps[:, None, :]].mean(axis=(1, 2))
        rate_r = r[sr[:, :, None], eps[:, None, :]].mean(axis=(1, 2))
        diffs[start:start + m] = rate_a - rate_r
    tail = (1 - level) / 2
    lo, hi = np.quantile(diffs, [tail, 1 - tail])
    return {"diff": float(a.mean() - r.mean()), "ci": [float(lo), float(hi)], "reps": int(reps)}
