"""Serving: a Policy (checkpoint + openpi transforms + jitted sampler) behind openpi's websocket protocol.

    python -m shallow_pi_jax.serve --checkpoint runs/l6/student --env libero --tokenizer paligemma_tokenizer.model

    from shallow_pi_jax.serve.policy import Policy, load_policy     # the servable policy (JAX)
    from shallow_pi_jax.serve.server import PolicyServer             # the websocket server (no JAX)
    from shallow_pi_jax.serve.presets import PRESETS, get_preset     # robots' observation layouts

The package itself imports nothing, so that `python -m shallow_pi_jax.serve --help` answers without JAX.
"""
