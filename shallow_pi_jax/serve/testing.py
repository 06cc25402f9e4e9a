"""Tiny, random checkpoints in the trainer's layout, for smoke tests of serving and evaluation.

    root = write_tiny_checkpoint("/tmp/tiny", depth=2)    # params/, model_config.json, assets/norm_stats.json
    python -m shallow_pi_jax.serve --checkpoint /tmp/tiny --env demo --tokenizer /tmp/tiny/tokenizer.model

Weights are random (perturbed away from init so no zero-initialised path hides anything); the
actions mean nothing. The tokenizer is the demo task's sentencepiece model.
"""
from __future__ import annotations

import pathlib

import jax
import numpy as np

from shallow_pi_jax.checkpoint import policy_dir
from shallow_pi_jax.data import norm_stats
from shallow_pi_jax.models.config import ModelConfig, tiny_config
from shallow_pi_jax.models.params import param_shapes
from shallow_pi_jax.sim.demo_tokenizer import train_tokenizer


def random_params(cfg: ModelConfig, seed: int = 0, scale: float = 1.0) -> dict:
    """Random numpy params of `cfg`'s tree. Built with numpy from the abstract shapes: eager flax
    init compiles op by op, which takes minutes on a loaded 2-core machine."""
    rng = np.random.default_rng(seed)

    def leaf(x):
        # 1/sqrt(fan-in) keeps activations O(1) through the stacks; vectors (norms, biases) get 0.1.
        std = scale / np.sqrt(x.shape[-2]) if len(x.shape) >= 2 else 0.1 * scale
        return (std * rng.standard_normal(x.shape)).astype(x.dtype)

    return jax.tree.map(leaf, param_shapes(cfg))


def tiny_norm_stats(state_dim: int, action_dim: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def stats(d):
        mean = rng.normal(size=d)
        std = rng.uniform(0.5, 2.0, size=d)
        return norm_stats.NormStats(mean=mean, std=std, q01=mean - 2 * std, q99=mean + 2 * std)

    return {"state": stats(state_dim), "actions": stats(action_dim)}


def write_tiny_checkpoint(root, cfg: ModelConfig | None = None, *, params=None, seed: int = 0,
                          state_dim: int = 8, robot_action_dim: int = 7, layer_map: dict | None = None,
                          tokenizer: bool = True) -> pathlib.Path:
    """Write params/, model_config.json, assets/norm_stats.json (and tokenizer.model) under `root`."""
    root = pathlib.Path(root)
    cfg = cfg or tiny_config()
    params = params if params is not None else random_params(cfg, seed)
    policy_dir.write(root, params, cfg, layer_map=layer_map)
    norm_stats.save(tiny_norm_stats(state_dim, robot_action_dim, seed),
                    root / policy_dir.ASSETS / policy_dir.NORM_STATS)
    if tokenizer:
        (root / "tokenizer.model").write_bytes(train_tokenizer())
    return root
