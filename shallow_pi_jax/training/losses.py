"""The three Shallow-π loss terms. Pure functions of model outputs; weights live in the config.

- task: flow matching against u = ε − a (openpi's sign convention);
- velocity KD: regress the student's velocity onto the frozen teacher's;
- attention KD: KL(teacher ‖ student) of attention distributions at paired layers, restricted to
  the keys that matter (by default the action-token queries over the valid prefix keys) and
  renormalised over them, per head; averaged over heads, queries, layer pairs and batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Floor inside the logs: keeps KL finite where a (renormalised) probability underflows to 0.
_EPS = 1e-9


def flow_matching_loss(v_student, u_t):
    return jnp.mean(jnp.square(v_student.astype(jnp.float32) - u_t.astype(jnp.float32)))


def velocity_kd_loss(v_student, v_teacher):
    return jnp.mean(jnp.square(v_student.astype(jnp.float32) - jax.lax.stop_gradient(v_teacher).astype(jnp.float32)))


def attention_kd_loss(attn_teacher, attn_student, key_mask, query_mask=None):
    """KL(A_teacher ‖ A_student) over the selected keys.

    Args:
      attn_teacher, attn_student: [layers, B, heads, Q, K] attention probabilities (rows sum to 1
        over all keys the model saw; K here may be a leading slice of them, e.g. the prefix).
      key_mask: [B, K] bool, keys that take part (padding and masked cameras are False). Both
        distributions are renormalised over these keys, so excluded keys carry no weight at all.
      query_mask: optional [B, Q] bool; rows that are False (e.g. padding queries in the all-token
        ablation) are left out of the average.
    """
    if attn_teacher.shape != attn_student.shape:
        raise ValueError(f"attention KD: teacher shape {attn_teacher.shape} != student shape {attn_student.shape}")
    if key_mask.shape != (attn_teacher.shape[1], attn_teacher.shape[-1]):
        raise ValueError(f"attention KD: key_mask expected shape {(attn_teacher.shape[1], attn_teacher.shape[-1])}, "
                         f"got {key_mask.shape}")
    m = key_mask[None, :, None, None, :].astype(jnp.float32)

    def renorm(a):
        a = a.astype(jnp.float32) * m
        return a / jnp.maximum(jnp.sum(a, axis=-1, keepdims=True), _EPS)

    p_t = jax.lax.stop_gradient(renorm(attn_teacher))
    p_s = renorm(attn_student)
    kl = jnp.sum(p_t * (jnp.log(p_t + _EPS) - jnp.log(p_s + _EPS)) * m, axis=-1)  # [layers, B, heads, Q]
    # Rows with no valid key at all contribute nothing (their renormalised mass is 0 on both sides).
    row_valid = (jnp.sum(key_mask, axis=-1) > 0)[None, :, None, None]
    if query_mask is not None:
        if query_mask.shape != (attn_teacher.shape[1], attn_teacher.shape[3]):
            raise ValueError(f"attention KD: query_mask expected shape "
                             f"{(attn_teacher.shape[1], attn_teacher.shape[3])}, "
                             f"got {query_mask.shape}")
        row_valid = row_valid & query_mask[None, :, None, :]
    w = jnp.broadcast_to(row_valid, kl.shape).astype(jnp.float32)
    return jnp.sum(kl * w) / jnp.maximum(jnp.sum(w), 1.0)
