"""openpi's params tree for a ModelConfig: initialised, or as shapes only (nothing allocated)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

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
