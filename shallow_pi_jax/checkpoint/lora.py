"""LoRA leaves of an openpi checkpoint, merged exactly into the weights they adapt.

openpi fine-tunes with LoRA (its `gemma_2b_lora` / `gemma_300m_lora` variants) by storing, next to a
weight `w` applied as `einsum("lhs,rhs->out", x, w)`, a pair `lora_a` (w's shape with its last axis
replaced by the rank) and `lora_b` (second-to-last axis replaced by the rank). With A = rhs[-2],
B = rhs[-1] and a new label L, its forward adds

    scale * einsum("out[B->L],rhs[A->L]->out", einsum("lhs,rhs[B->L]->out[B->L]", x, lora_a), lora_b)

with scale = alpha / rank (alpha / sqrt(rank) with rslora). The feed-forward keeps its LoRA as
`gating_einsum_lora_{a,b}` and `linear_lora_{a,b}` next to `gating_einsum` / `linear`, added
without any scale; written as einsums they follow the same rule. Both steps are linear in x, so
the sum is einsum(eqn, x, dW) for one dW of w's shape; `delta_equation` derives it from the weight's
equation. For the q / kv / qkv einsums dW is a product per head (and per k/v slot). For
`attn_vec_einsum` ("BTNH,NHD->BTD") the first step also sums over the heads N, and the second
("BTL,NLD->BTD") sums lora_b over its own N, so dW[n, h, d] = sum_l lora_a[n, h, l] * sum_m lora_b[m, l, d]:
every head's update uses lora_b summed over heads. That is what openpi computes, so it is what
is merged.

    pairs = find_pairs({path: shape})           # {weight path: LoraPair}; malformed leaves raise
    merged, n = merge_lora(flat_params)         # plain tree: every w + dW, no LoRA leaves left

The rank is read from the shapes; alpha is not stored, so it comes from `alpha` (default: openpi's
variants, whose alpha equals the rank: scale 1.0).
"""
from __future__ import annotations

import dataclasses
import functools
import re
import string
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SEP = "/"
# rank -> alpha of openpi's LoRA variants (gemma.get_config): gemma_2b_lora and gemma_300m_lora.
OPENPI_ALPHAS: Mapping[int, float] = {16: 16.0, 32: 32.0}
_VARIANTS = "gemma_2b_lora: rank 16, alpha 16; gemma_300m_lora: rank 32, alpha 32"

# The weight equations of openpi's gemma.py (its '2'/'3' stacking axis written C here).
ATTENTION_EQUATIONS = {
    "q_einsum": "BTD,NDH->BTNH",
    "kv_einsum": "BSD,CKDH->CBSKH",
    "qkv_einsum": "BSD,CKDH->CBSKH",
    "attn_vec_einsum": "BTNH,NHD->BTD",
}
# The feed-forward's plain dots as einsums: x @ gating[c] for both c, and h @ linear.
FFN_EQUATIONS = {
    "gating_einsum": "BTD,CDF->CBTF",
    "linear": "BTF,FD->BTD",
}


@dataclasses.dataclass(frozen=True)
class LoraPair:
    weight: str     # path of the adapted weight
    a: str          # path of lora_a
    b: str          # path of lora_b
    equation: str   # "a,b->dW" over every axis of the stored leaves (layer axis included)
    rank: int
    scaled: bool    # attention: alpha/rank; feed-forward: no scale
    batch: int      # leading axes the weight's equation does not name (1: the layer stack)


def is_lora_leaf(path: str) -> bool:
    name = path.rsplit(SEP, 1)[-1]
    return name in ("lora_a", "lora_b") or name.endswith(("_lora_a", "_lora_b"))


def delta_equation(eqn: str, label: str = "L") -> str:
    """The einsum "a_axes,b_axes->rhs" giving dW from lora_a and lora_b for a weight used as `eqn`."""
    m = re.fullmatch(r"([A-Za-z]+),([A-Za-z]+)->([A-Za-z]+)", eqn)
    if not m or label in eqn:
        raise ValueError(f"LoRA einsum: expected 'lhs,rhs->out' in letters without {label!r}, got {eqn!r}")
    _, rhs, out = m.groups()
    a_label, b_label = rhs[-2], rhs[-1]
    if b_label not in out:
        raise ValueError(f"LoRA einsum {eqn!r}: the weight's last axis {b_label!r} must reach the output")
    a_rhs, a_out = rhs.replace(b_label, label), out.replace(b_label, label)
    b_rhs = rhs.replace(a_label, label)
    # An axis of lora_b that openpi's first einsum already summed away (absent from its output) and
    # that is not in the result is summed over again, on its own, by the second einsum: it is not
    # the same index as lora_a's, so it gets its own letter.
    free = iter(c for c in string.ascii_uppercase + string.ascii_lowercase if c not in eqn + label)
    b_rhs = "".join(c if c == label or c in a_out or c in out else next(free) for c in b_rhs)
    return f"{a_rhs},{b_rhs}->{rhs}"


def _equation_for(a_path: str) -> tuple[str, str, bool]:
    """(weight path, weight equation, scaled) for a lora_a / lora_b leaf path."""
    parent, name = a_path.rsplit(SEP, 1) if SEP in a_path else ("", a_path)
    if name in ("lora_a", "lora_b"):
        module = re.sub(r"_\d+$", "", parent.rsplit(SEP, 1)[-1])
        if module in ATTENTION_EQUATIONS:
            return f"{parent}{SEP}w", ATTENTION_EQUATIONS[module], True
        known = sorted(ATTENTION_EQUATIONS)
    else:
        weight = name[: -len("_lora_a")]
        if weight in FFN_EQUATIONS:
            return f"{parent}{SEP}{weight}" if parent else weight, FFN_EQUATIONS[weight], False
        known = sorted(FFN_EQUATIONS)
    raise ValueError(f"{a_path}: a LoRA leaf on no weight openpi adapts (expected one of {known})")


def find_pairs(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, LoraPair]:
    """{weight path: LoraPair} for every LoRA pair in a flat {path: shape}; checks every shape.

    A lone lora_a / lora_b, a pair without its weight, or shapes that do not fit the weight raise
    one ValueError naming the leaf, the expected and the actual shapes.
    """
    pairs = {}
    for path in sorted(p for p in shapes if is_lora_leaf(p)):
        if not path.endswith("lora_a"):
            if path[:-1] + "a" not in shapes:
                raise ValueError(f"{path}: LoRA leaf without its {path.rsplit(SEP, 1)[-1][:-1]}a")
            continue
        b_path = path[:-1] + "b"
        weight, eqn, scaled = _equation_for(path)
        if b_path not in shapes:
            raise ValueError(f"{path}: LoRA leaf without its {b_path.rsplit(SEP, 1)[-1]}")
        if weight not in shapes:
            raise ValueError(f"{path}: LoRA leaf without the weight it adapts, {weight}")
        w, a, b = (tuple(shapes[p]) for p in (weight, path, b_path))
        batch = len(w) - len(eqn.split(",")[1].split("->")[0])
        if batch < 0:
            raise ValueError(f"{weight}: shape {w} has fewer axes than openpi's {eqn!r} names")
        if len(a) != len(w) or a[:-1] != w[:-1] or a[-1] < 1:
            raise ValueError(f"{path}: expected shape {_with_rank(w, -1)} ({weight} {w} with its last axis "
                             f"the rank), got {a}")
        rank = a[-1]
        if b != w[:-2] + (rank, w[-1]):
            raise ValueError(f"{b_path}: expected shape {w[:-2] + (rank, w[-1])} ({weight} {w} with its "
                             f"second-to-last axis the rank {rank} of {path.rsplit(SEP, 1)[-1]}), got {b}")
        delta = delta_equation(eqn)
        layers = "".join(c for c in string.ascii_uppercase + string.ascii_lowercase if c not in delta)[:batch]
        lhs, rhs = delta.split("->")
        a_ax, b_ax = lhs.split(",")
        pairs[weight] = LoraPair(weight, path, b_path, f"{layers}{a_ax},{layers}{b_ax}->{layers}{rhs}", rank, scaled,
                                 batch)
    return pairs


def _with_rank(shape: tuple[int, ...], axis: int) -> str:
    dims = [str(d) for d in shape]
    dims[axis] = "rank"
    return f"({', '.join(dims)})"


def scale_of(pair: LoraPair, alpha: float | Mapping[int, float] | None = None, rslora: bool = False) -> float:
    """The factor openpi applies to the pair's update: 1 for the feed-forward, alpha/rank else."""
    if not pair.scaled:
        return 1.0
    if alpha is None or isinstance(alpha, Mapping):
        table = OPENPI_ALPHAS if alpha is None else alpha
        if pair.rank not in table:
            raise ValueError(
                f"{pair.a}: LoRA rank {pair.rank} matches no known openpi variant ({_VARIANTS}) and alpha "
                f"is not stored in the checkpoint; pass alpha (ranks given: {sorted(table)})")
        alpha = table[pair.rank]
    return float(alpha) / (float(np.sqrt(pair.rank)) if rslora else pair.rank)


def merge_pair(w, a, b, pair: LoraPair, scale: float, *, in_place: bool = False):
    """w + scale * dW, computed in float32 and cast back to w's dtype.

    numpy in, numpy out (one row of the leading axis at a time, so the float32 temporaries stay
    one layer big; `in_place` writes into w). jax.Arrays are merged on their devices, keeping w's
    sharding (`in_place`: w's buffer is donated, and w must not be used again).
    """
    if isinstance(w, jax.Array):
        return _merge_on_device(pair.equation, float(scale), w.sharding, in_place)(w, a, b)
    w = np.asarray(w)
    out = w if in_place else np.empty_like(w)
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if pair.batch:
        # The layer axis leads every operand: merge one layer at a time.
        lhs, rhs = pair.equation.split("->")
        row = ",".join(t[1:] for t in lhs.split(",")) + "->" + rhs[1:]
        for i in range(w.shape[0]):
            out[i] = _merged(w[i], np.einsum(row, a32[i], b32[i], optimize=True), scale)
        return out
    out[...] = _merged(w, np.einsum(pair.equation, a32, b32, optimize=True), scale)
    return out


def _merged(w: np.ndarray, delta: np.ndarray, scale: float) -> np.ndarray:
    return (w.astype(np.float32) + np.float32(scale) * delta).astype(w.dtype)


@functools.lru_cache(maxsize=64)
def _merge_on_device(eqn: str, scale: float, sharding, donate: bool):
    def merge(w, a, b):
        delta = jnp.einsum(eqn, a.astype(jnp.float32), b.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
        return (w.astype(jnp.float32) + scale * delta).astype(w.dtype)

    return jax.jit(merge, out_shardings=sharding, donate_argnums=0 if donate else ())


def merge_lora(flat: Mapping[str, Any], *, alpha: float | Mapping[int, float] | None = None,
               rslora: bool = False, in_place: bool = False) -> tuple[dict[str, Any], int]:
    """(plain flat params, number of pairs merged): every adapted weight replaced by w + scale*dW.

    `flat`: '/'-joined paths -> numpy or jax arrays (openpi_params.flatten_params). `alpha`: one
    value for every attention pair, or {rank: alpha}; None means openpi's variants (alpha = rank),
    and a rank they do not have is an error. `rslora`: scale alpha/sqrt(rank), as openpi's option.
    A tree without LoRA leaves comes back as is.
    """
    pairs = find_pairs({p: tuple(np.shape(x)) for p, x in flat.items()})
    if not pairs:
        return dict(flat), 0
    scales = {w: scale_of(pair, alpha, rslora) for w, pair in pairs.items()}
    lora = {p for pair in pairs.values() for p in (pair.a, pair.b)}
    out = {p: x for p, x in flat.items() if p not in lora}
    for w, pair in pairs.items():
        out[w] = merge_pair(flat[w], flat[pair.a], flat[pair.b], pair, scales[w], in_place=in_place)
    return out, len(pairs)


def describe(pairs: Mapping[str, LoraPair], alpha=None, rslora: bool = False) -> str:
    """One line: how many pairs, their ranks and scales (for the loaders' log)."""
    kinds: dict[tuple[int, float], int] = {}
    for pair in pairs.values():
        key = (pair.rank, scale_of(pair, alpha, rslora))
        kinds[key] = kinds.get(key, 0) + 1
    detail = ", ".join(f"{n} of rank {r} scale {s:g}" for (r, s), n in sorted(kinds.items()))
    return f"{len(pairs)} LoRA pairs merged into their weights ({detail})"
