"""openpi's params tree for a ModelConfig: initialised, or as shapes only (nothing allocated)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.observation import dummy_observation
from shallow_pi_jax.models.pi0 import Pi0


def init_params(cfg: ModelConfig, rng) -> dict:
    obs = dummy_observation(cfg, 1)
    x = jnp.zeros((1, cfg.action_horizon, cfg.action_dim), jnp.float32)
    return Pi0(cfg).init(rng, obs, x, jnp.ones((1,), jnp.float32), method=Pi0.velocity)["params"]


def param_shapes(cfg: ModelConfig) -> dict:
    """openpi's params tree for `cfg` as jax.ShapeDtypeStruct leaves; nothing is allocated."""
    return jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))



@functools.partial(jax.jit, static_argnames=("shape", "dtype"))
def _normal(key, std, *, shape, dtype):
    # Drawn in the leaf's dtype inside one program: no float32 copy of the leaf to cast afterwards.
    return jax.random.normal(key, shape, dtype) * std.astype(dtype)


def random_params_in_dtype(cfg: ModelConfig, seed: int = 0, dtype: str | None = None, scale: float = 1.0) -> dict:
    """Random params of `cfg`'s tree, each leaf drawn directly in `dtype` (default: the tree's own,
    float32), one leaf at a time.

    For timing real sizes on a small host: the peak is the params themselves plus one leaf's random
    bits, never a float32 (or float64) copy of the tree to cast afterwards. Values: normal with std
    scale/sqrt(fan-in) for matrices (activations stay O(1) through the stacks), 0.1·scale for
    vectors; not an initialisation to train from.
    """
    leaves, tree = jax.tree.flatten(param_shapes(cfg))
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    out = []
    for key, leaf in zip(keys, leaves):
        std = scale / np.sqrt(leaf.shape[-2]) if len(leaf.shape) >= 2 else 0.1 * scale
        out.append(_normal(key, np.float32(std), shape=tuple(leaf.shape), dtype=jnp.dtype(dtype or leaf.dtype)))
    return jax.tree.unflatten(tree, out)
