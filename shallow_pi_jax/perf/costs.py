"""FLOPs of a π0 / π0.5 inference from XLA's cost analysis, split into vision / prefix / denoising.

    flops = inference_flops(cfg, batch_size=1, num_steps=10)      # no weights needed
    flops.vision, flops.prefix, flops.denoise, flops.total

XLA's HloCostAnalysis counts the body of a while loop once, whatever its trip count, and the model
scans over layers (and sampling scans over Euler steps), so `jit(f).lower(...).compile()
.cost_analysis()` of the model as written under-counts by ~depth×steps. `unroll_scans(f)` re-emits
f's jaxpr with every `scan` written out iteration by iteration; XLA then sees straight-line code
and its count is the real one. Nothing runs: the functions are only lowered and compiled, with
ShapeDtypeStruct params.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from shallow_pi_jax.models import masks
from shallow_pi_jax.models import pi0 as pi0_lib
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.observation import dummy_observation
from shallow_pi_jax.models.params import param_shapes
from shallow_pi_jax.models.pi0 import CameraSkippingPi0, Pi0

# Primitives that wrap a single sub-jaxpr called once with the eqn's inputs.
_CALLS = ("pjit", "jit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call",
          "custom_vjp_call", "custom_vjp_call_jaxpr")


def _eval_jaxpr(jaxpr, consts, args):
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "scan":
            outs = _unrolled_scan(eqn.params, invals)
        elif name in _CALLS:
            sub = next(eqn.params[k] for k in ("jaxpr", "call_jaxpr", "fun_jaxpr") if k in eqn.params)
            outs = _eval_closed(sub, invals)
        elif name == "while":
            raise ValueError("unroll_scans: a while loop has no static trip count; its cost would be counted once")
        else:
            outs = eqn.primitive.bind(*invals, **eqn.params)
            if not eqn.primitive.multiple_results:
                outs = [outs]
        for v, x in zip(eqn.outvars, outs):
            if not isinstance(v, jcore.DropVar):
                env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _eval_closed(closed, args):
    if isinstance(closed, jcore.ClosedJaxpr):
        return _eval_jaxpr(closed.jaxpr, closed.consts, args)
    return _eval_jaxpr(closed, (), args)


def _unrolled_scan(params, invals):
    n_consts, n_carry, length = params["num_consts"], params["num_carry"], params["length"]
    consts, carry, xs = invals[:n_consts], invals[n_consts:n_consts + n_carry], invals[n_consts + n_carry:]
    steps = range(length - 1, -1, -1) if params["reverse"] else range(length)
    ys = []
    for i in steps:
        outs = _eval_closed(params["jaxpr"], [*consts, *carry, *(x[i] for x in xs)])
        carry, y = outs[:n_carry], outs[n_carry:]
        ys.append(y)
    if params["reverse"]:
        ys = ys[::-1]
    stacked = [jnp.stack([y[j] for y in ys]) for j in range(len(ys[0]))] if ys and ys[0] else []
    return [*carry, *stacked]


def unroll_scans(fun: Callable) -> Callable:
    """`fun` with every lax.scan (flax nn.scan included) written out; same inputs and outputs."""
    def unrolled(*args):
        closed, out_shape = jax.make_jaxpr(fun, return_shape=True)(*args)
        flat = jax.tree.leaves(args)
        outs = _eval_jaxpr(closed.jaxpr, closed.consts, flat)
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)
    return unrolled


def xla_flops(fun: Callable, *abstract_args, unroll: bool = True, compiled: bool = True) -> float:
    """FLOPs of one call of `fun` per XLA's cost analysis of the compiled (CPU) executable.

    `compiled=False` analyses the lowered, unoptimised HLO instead: no XLA compilation (minutes at
    real sizes on a small CPU), about 1 % different (fusion drops or adds a few elementwise ops).
    """
    f = unroll_scans(fun) if unroll else fun
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
                    check_whole: bool = False) -> InferenceFlops:
    """FLOPs per sample_actions call; `active_cameras` (None = all) skips the vision tower of the rest."""
    active = tuple(cfg.image_keys) if active_cameras is None else tuple(active_cameras)
    unknown = set(active) - set(cfg.image_keys)
    if unknown:
        raise ValueError(f"active_cameras: {sorted(unknown)} not in the model's cameras {cfg.image_keys}")
    model = CameraSkippingPi0(cfg, active_cameras=active)
    params, obs, noise = abstract_inputs(cfg, batch_size)
    b, width = batch_size, cfg.llm.width
    tokens = jax.ShapeDtypeStruct((b, len(cfg.image_keys) * cfg.tokens_per_image, width), jnp.dtype(cfg.dtype))

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
                          whole=whole)


def vision_flops(cfg: ModelConfig, active_cameras: tuple[str, ...], batch_size: int = 1,
                 compiled: bool = True) -> float:
    """FLOPs of SigLIP (patch embedding, encoder, projection head) over `active_cameras`."""
    if not active_cameras:
        return 0.0
    model = Pi0(cfg)
    params, obs, _ = abstract_inputs(cfg, batch_size)
    return xla_flops(lambda p, o: model.apply({"params": p}, o, tuple(active_cameras), method=_vision), params, obs,
                     compiled=compiled)
