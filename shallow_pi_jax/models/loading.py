"""Build a Pi0 for a config or straight from an openpi checkpoint, with the tree checked first.

    model, params = load_model("pi05_libero/params", action_horizon=10, max_token_len=200)

Sizes come from the checkpoint's shapes (π0 vs π0.5 from the heads present); what the tree cannot
tell (horizon, prompt length, cameras, dtype) comes from the keyword overrides.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from shallow_pi_jax import checkpoints
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


def load_model(params_dir, *, config: ModelConfig | None = None, dtype=None, sharding=None, **overrides):
    """Restore an openpi params directory and the Pi0 that runs it.

    `config` (e.g. from an experiment file) wins; otherwise sizes are inferred from the tree.
    Raises one ValueError listing missing / unexpected / mis-shaped leaves when the checkpoint is
    of another architecture than the config.
    """
    stored = checkpoints.flatten_params(checkpoints.params_shapes(params_dir))
    if config is None:
        config = ModelConfig.from_param_shapes({k: v.shape for k, v in stored.items()}, **overrides)
    expected = param_shapes(config)
    checkpoints.validate_params(checkpoints.unflatten_params(stored), expected)
    params = checkpoints.restore_params(params_dir, dtype=dtype, sharding=sharding)
    return Pi0(config), params
