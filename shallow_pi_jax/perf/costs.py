"""FLOPs of a π0 / π0.5 inference from XLA's cost analysis, split into vision / prefix / denoising.

    flops = inference_flops(cfg, batch_size=1, num_steps=10)      # no weights needed
    compact = inference_flops(cfg, plan=PrefixPlan(cfg.image_keys[:2], 32))   # compacted prefix
    flops.vision, flops.prefix, flops.denoise, flops.total

XLA's HloCostAnalysis counts the body of a while loop once, whatever its trip count, and the model
scans over layers (and sampling scans over Euler steps), so `jit(f).lower(...).compile()
.cost_analysis()` of the model as written under-counts by ~depth×steps. `unroll_scans(f, *args)`
re-emits f's jaxpr with every `scan` fully unrolled; XLA then sees straight-line code and its count
is the real one. `matmul_flops` counts matmuls and convolutions from the jaxpr itself (trip counts
included): an exact, compiler-independent cross-check. Nothing runs: the functions are only
lowered and compiled, with ShapeDtypeStruct params. The one cost counter of the project: the TPU
AOT report (perf/aot.py) and the benchmarks use it too.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from shallow_pi_jax.models import masks
from shallow_pi_jax.models import pi0 as pi0_lib
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.observation import dummy_observation
from shallow_pi_jax.models.params import param_shapes
from shallow_pi_jax.models.pi0 import CameraSkippingPi0, CompactPi0, Pi0
from shallow_pi_jax.models.prefix import PrefixPlan, full_plan


def unroll_scans(fn: Callable, *args) -> Callable:
    """`fn` (traced at `args`) with every scan fully unrolled, so XLA's cost analysis counts each iteration."""
    closed = jax.make_jaxpr(fn)(*args)
    out_tree = jax.tree.structure(jax.eval_shape(fn, *args))
    unrolled = _unrolled_jaxpr(closed)

    flat = jcore.jaxpr_as_fun(unrolled)

    def run(*a):
        return jax.tree.unflatten(out_tree, flat(*jax.tree.leaves(a)))
    return run


def _unrolled_jaxpr(j):
    if isinstance(j, jcore.ClosedJaxpr):
        return j.replace(jaxpr=_unrolled_jaxpr(j.jaxpr))
    eqns = []
    for e in j.eqns:
        params = {k: _unrolled_param(v) for k, v in e.params.items()}
        if e.primitive.name == "scan":
            params["unroll"] = params["length"]
        eqns.append(e.replace(params=params))
    return j.replace(eqns=eqns)


def _unrolled_param(v):
    if isinstance(v, (jcore.Jaxpr, jcore.ClosedJaxpr)):
        return _unrolled_jaxpr(v)
    if isinstance(v, tuple) and v and all(isinstance(x, (jcore.Jaxpr, jcore.ClosedJaxpr)) for x in v):
        return tuple(_unrolled_jaxpr(x) for x in v)  # cond branches
    return v


def matmul_flops(fn: Callable, *args) -> float:
    """Global matmul + convolution FLOPs of one call, read from the jaxpr with loop trip counts.

    An exact, compiler-independent count (elementwise ops excluded): a cross-check of XLA's count.
    """
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_flops(j) -> float:
    total = 0.0
    for e in j.eqns:
        name = e.primitive.name
        if name == "dot_general":
            (lc, _), (lb, _) = e.params["dimension_numbers"]
            lhs, out = e.invars[0].aval.shape, e.outvars[0].aval.shape
            contracted = float(np.prod([lhs[a] for a in lc], dtype=np.float64))
            total += 2.0 * float(np.prod(out, dtype=np.float64)) * contracted
        elif name == "conv_general_dilated":
            rhs, out = e.invars[1].aval.shape, e.outvars[0].aval.shape
            dn = e.params["dimension_numbers"]
            k_in = rhs[dn.rhs_spec[1]]
            k_spatial = float(np.prod([rhs[a] for a in dn.rhs_spec[2:]], dtype=np.float64))
            total += 2.0 * float(np.prod(out, dtype=np.float64)) * k_in * k_spatial
        reps = e.params.get("length", 1) if name == "scan" else 1
        subs = [v for v in e.params.values() if isinstance(v, (jcore.Jaxpr, jcore.ClosedJaxpr))]
        if name == "cond":
            subs = [max(e.params["branches"], key=lambda b: _jaxpr_flops(b.jaxpr))]
        for sub in subs:
            total += reps * _jaxpr_flops(sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub)
    return total


def compile_timed(fn, args):
    """(compiled executable, seconds) of `fn` (jitted or not) lowered at abstract `args`."""
    t0 = time.time()
    f = fn if hasattr(fn, "lower") else jax.jit(fn)
    compiled = f.lower(*args).compile()
    return compiled, time.time() - t0


def xla_cost(compiled) -> dict[str, float]:
    """Per-device FLOPs and XLA's estimated seconds (`optimal_seconds`) of a compiled executable."""
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):  # older jax: one dict per device
        ca = ca[0]
    ca = ca or {}
    seconds = float(ca.get("optimal_seconds", float("nan")))
    # libtpu (0.0.42) returns a negative `optimal_seconds` for some programs (seen where buffers are
    # placed in on-chip memory, e.g. the real-size remat step: -108.9); that is no estimate at all.
    return {"flops": float(ca.get("flops", float("nan"))), "seconds": seconds if seconds >= 0 else float("nan"),
            "raw_optimal_seconds": seconds}


def xla_flops(fun: Callable, *abstract_args, unroll: bool = True, compiled: bool = True) -> float:
    """FLOPs of one call of `fun` per XLA's cost analysis of the compiled (CPU) executable.

    `compiled=False` analyses the lowered, unoptimised HLO instead: no XLA compilation (minutes at
    real sizes on a small CPU), about 1 % different (fusion drops or adds a few elementwise ops).
    """
    f = unroll_scans(fun, *abstract_args) if unroll else fun
    lowered = jax.jit(f).lower(*abstract_args)
    analysis = lowered.compile().cost_analysis() if compiled else lowered.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returns one dict per device
        analysis = analysis[0]
    return float(analysis["flops"])


# ----------------------------------------------------------------------------- the model's parts

def _vision(module: Pi0, obs, active):
    c = module.config
    return [module.PaliGemma.img(obs["images"][cam]) for cam in c.image_keys if cam in active]


def _prefix_cache(module: Pi0, obs, image_tokens):
    """Prompt embedding + the backbone over the prefix: what sampling does once, before the steps.

    The backbone's output is returned too: the scanned model computes the last layer's attention
    and MLP on the prefix although only its keys/values are used, and so must the count.
    """
    prefix = module.embed_prefix(obs, image_tokens=image_tokens)
    positions = masks.positions_from_mask(prefix.mask)
    (out, _), kv_cache, _ = module.PaliGemma.llm([prefix.tokens, None], positions,
                                                 masks.make_attn_mask(prefix.mask, prefix.ar_mask))
    return kv_cache, prefix.mask, out


def _denoise(module: Pi0, obs, kv_cache, prefix_mask, noise, num_steps: int):
    """The Euler loop of Pi0.sample_actions (same step function), on a given prefix cache."""
    (x_0, _), _ = nn.scan(
        pi0_lib.denoise_step, variable_broadcast="params", split_rngs={"params": False},
        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast), length=num_steps,
    )(module, (noise, jnp.float32(1.0)), obs, kv_cache, prefix_mask, -1.0 / num_steps)
    return x_0


@dataclasses.dataclass(frozen=True)
class InferenceFlops:
    vision: float   # SigLIP over the cameras that are computed
    prefix: float   # prompt embedding + backbone over prefix tokens (KV cache)
    denoise: float  # num_steps × (action expert over the suffix, attending to the cache)
    num_steps: int
    cameras: tuple[str, ...]
    # sample_actions counted in one piece (optional cross-check): XLA drops the last layer's unused
    # prefix attention/MLP there, which the scanned program executes, so it is a little lower.
    whole: Optional[float] = None
    prefix_len: Optional[int] = None  # tokens in the prefix (image tokens + prompt tokens)

    @property
    def total(self) -> float:
        return self.vision + self.prefix + self.denoise

    @property
    def per_step(self) -> float:
        return self.denoise / self.num_steps

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(per_step=self.per_step, total=self.total, cameras=list(self.cameras))
        return d


def abstract_inputs(cfg: ModelConfig, batch_size: int = 1):
    params = param_shapes(cfg)
    obs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), dummy_observation(cfg, batch_size))
    noise = jax.ShapeDtypeStruct((batch_size, cfg.action_horizon, cfg.action_dim), jnp.float32)
    return params, obs, noise


def inference_flops(cfg: ModelConfig, batch_size: int = 1, num_steps: int = 10,
                    active_cameras: Optional[tuple[str, ...]] = None, compiled: bool = True,
                    check_whole: bool = False, plan: Optional[PrefixPlan] = None) -> InferenceFlops:
    """FLOPs per sample_actions call; `active_cameras` (None = all) skips the vision tower of the rest
    (their tokens stay in the prefix). `plan` instead compacts the prefix (models/prefix.py): only its
    cameras are computed and only they and its `prompt_len` prompt tokens are in the prefix."""
    if plan is not None:
        if active_cameras is not None:
            raise ValueError("inference_flops: pass active_cameras or plan, not both (a plan names its cameras)")
        plan.check(cfg)
        active = plan.cameras
        model = CompactPi0(cfg, plan=plan)
    else:
        active = tuple(cfg.image_keys) if active_cameras is None else tuple(active_cameras)
        unknown = set(active) - set(cfg.image_keys)
        if unknown:
            raise ValueError(f"active_cameras: {sorted(unknown)} not in the model's cameras {cfg.image_keys}")
        model = CameraSkippingPi0(cfg, active_cameras=active)
    params, obs, noise = abstract_inputs(cfg, batch_size)
    b, width = batch_size, cfg.llm.width
    n_image_tokens = (len(plan.cameras) if plan is not None else len(cfg.image_keys)) * cfg.tokens_per_image
    tokens = jax.ShapeDtypeStruct((b, n_image_tokens, width), jnp.dtype(cfg.dtype))

    vision = vision_flops(cfg, active, batch_size, compiled=compiled)
    prefix_fn = lambda p, o, t: model.apply({"params": p}, o, t, method=_prefix_cache)  # noqa: E731
    prefix = xla_flops(prefix_fn, params, obs, tokens, compiled=compiled)
    kv_cache, prefix_mask, _ = jax.eval_shape(prefix_fn, params, obs, tokens)
    denoise = xla_flops(lambda p, o, kv, m, n: model.apply({"params": p}, o, kv, m, n, num_steps, method=_denoise),
                        params, obs, kv_cache, prefix_mask, noise, compiled=compiled)
    whole = None
    if check_whole:
        whole = xla_flops(lambda p, o, n: model.apply({"params": p}, None, o, num_steps=num_steps, noise=n,
                                                      method="sample_actions"), params, obs, noise, compiled=compiled)
    return InferenceFlops(vision=vision, prefix=prefix, denoise=denoise, num_steps=num_steps, cameras=active,
                          whole=whole, prefix_len=n_image_tokens + (plan or full_plan(cfg)).prompt_len)


def vision_flops(cfg: ModelConfig, active_cameras: tuple[str, ...], batch_size: int = 1,
                 compiled: bool = True) -> float:
    """FLOPs of SigLIP (patch embedding, encoder, projection head) over `active_cameras`."""
    if not active_cameras:
        return 0.0
    model = Pi0(cfg)
    params, obs, _ = abstract_inputs(cfg, batch_size)
    return xla_flops(lambda p, o: model.apply({"params": p}, o, tuple(active_cameras), method=_vision), params, obs,
                     compiled=compiled)
