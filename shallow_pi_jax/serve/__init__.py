"""Serving: a Policy (checkpoint + openpi transforms + jitted sampler) behind openpi's websocket protocol.

    python -m shallow_pi_jax.serve --checkpoint runs/l6/student --env libero --tokenizer paligemma_tokenizer.model
"""
from shallow_pi_jax.serve.policy import Policy, load_checkpoint, load_policy
from shallow_pi_jax.serve.presets import PRESETS, get_preset
from shallow_pi_jax.serve.server import PolicyServer

__all__ = ["PRESETS", "Policy", "PolicyServer", "get_preset", "load_checkpoint", "load_policy"]
