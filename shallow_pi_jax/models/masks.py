"""Token bookkeeping shared by training and sampling: attention masks, positions, time embedding.

Axis letters in shape comments and the einsum string:
    B  batch
    T  tokens of the sequence being masked; a mask [B, T, T] is indexed [batch, query, key]
    i  (einsum in `posemb_sincos`) the batch axis of the times t, i.e. B
    j  (einsum in `posemb_sincos`) frequency index, dim // 2 of them
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def make_attn_mask(input_mask, ar_mask):
    """[B, T] validity and [T] (or [B, T]) block starts → [B, T, T] bool mask.

    Tokens are grouped into blocks by `cumsum(ar_mask)`; token i may attend to j iff j's block is not
    later than i's and both tokens are valid. All-False ar gives full bidirectional attention, all-True
    gives causal attention.
    """
    ar = jnp.broadcast_to(ar_mask, input_mask.shape)
    cum = jnp.cumsum(ar, axis=1)
    allowed = cum[:, None, :] <= cum[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    return allowed & valid


def positions_from_mask(input_mask):
    """RoPE positions: padding tokens do not advance the position counter."""
    return jnp.cumsum(input_mask, axis=1) - 1


def posemb_sincos(t, dim: int, min_period: float = 4e-3, max_period: float = 4.0):
    """Sine-cosine embedding of scalar times t [B] → [B, dim], sine half first (openpi's layout)."""
    if dim % 2:
        raise ValueError(f"time embedding width must be even, got {dim}")
    fraction = jnp.linspace(0.0, 1.0, dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    angle = jnp.einsum("i,j->ij", t, 1.0 / period * 2 * jnp.pi, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)
