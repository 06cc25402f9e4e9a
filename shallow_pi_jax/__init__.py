"""shallow_pi_jax: Shallow-pi distillation of openpi pi0 / pi0.5 in JAX/Flax."""
