"""The Gemma mixture of openpi: a PaliGemma backbone and an action expert that share attention.

Each layer runs q/k/v projections per expert on that expert's own tokens, concatenates them along
the sequence, attends jointly, then splits the result back for each expert's output projection and
MLP. Param names are openpi's (`layers/attn/q_einsum/w`, `..._1` for the expert, ...), with the
layer stack on axis 0 via `nn.scan`.

An expert whose input is `None` is skipped for the whole call: the prefix-only pass of sampling runs
just the backbone and returns its per-layer keys/values; denoising steps run just the expert
against that cache.

Axis letters in einsum strings and shape comments:
    B  batch
    T  query tokens (in `q_einsum`, one expert's tokens; in attention, all active experts' tokens)
    S  key/value tokens (in `kv_einsum` / `qkv_einsum`, the new tokens of one expert; in attention,
       any cached keys followed by the new ones, i.e. the mask is [B, T, S])
    N  query heads
    K  key/value heads (GQA); `qkv_einsum` is used only when K == N, so there it also indexes q's heads
    G  query heads per key/value head, N // K
    H  head dim
    D  width of the expert whose weights are applied
    C  stacked projections of one weight: 3 (q, k, v) in `qkv_einsum`, 2 (k, v) in `kv_einsum`
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from shallow_pi_jax.models.config import GemmaConfig

# Masked logits get this instead of -inf so fully masked rows stay finite (openpi's value).
BIG_NEG = -2.3819763e38


def _name(base: str, i: int) -> str:
    return base if i == 0 else f"{base}_{i}"


def _fan_in_init(in_axes: Sequence[int]):
    """Normal init scaled by 1/sqrt(fan-in); only used for training from scratch."""
    def init(key, shape, dtype=jnp.float32):
        fan_in = math.prod(shape[a] for a in in_axes)
        return jax.random.normal(key, shape, dtype) / math.sqrt(fan_in)
    return init


def apply_rope(x, positions, max_wavelength: float = 10_000.0):
    """Rotary embedding on the last axis, split-half convention. x: [B, T, N, H], positions: [B, T]."""
    half = x.shape[-1] // 2
    freq_exponents = (2.0 / x.shape[-1]) * jnp.arange(half, dtype=jnp.float32)
    timescale = max_wavelength ** freq_exponents
    radians = positions[..., None] / timescale[None, None, :]
    radians = radians[..., None, :]
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm in float32; with a condition it becomes openpi's adaptive norm (π0.5 expert).

    Returns (normed, gate); gate is None for the plain norm and scales the residual branch otherwise.
    """

    @nn.compact
    def __call__(self, x, cond=None):
        dtype = x.dtype
        var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
        normed = x * jnp.reciprocal(jnp.sqrt(var + 1e-6))
        if cond is None:
            scale = self.param("scale", nn.initializers.zeros, (x.shape[-1],))
            return (normed * (1 + scale)).astype(dtype), None
        # Zero init: the adaptive norm starts as the identity norm with a zero gate, like openpi.
        mod = nn.Dense(3 * x.shape[-1], kernel_init=nn.initializers.zeros, dtype=dtype)(cond)
        scale, shift, gate = jnp.split(mod[:, None, :], 3, axis=-1)
        return (normed * (1 + scale) + shift).astype(dtype), gate


class FeedForward(nn.Module):
    width: int
    mlp_dim: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        gating = self.param("gating_einsum", _fan_in_init([1]), (2, self.width, self.mlp_dim)).astype(self.dtype)
        linear = self.param("linear", _fan_in_init([0]), (self.mlp_dim, self.width)).astype(self.dtype)
        x = x.astype(self.dtype)
        return (nn.gelu(x @ gating[0], approximate=True) * (x @ gating[1])) @ linear


class Einsum(nn.Module):
    """A bare weight `w` applied with an einsum (openpi keeps these as `<name>/w`)."""
    shape: tuple[int, ...]
    in_axes: tuple[int, ...]
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, eqn: str, x):
        w = self.param("w", _fan_in_init(self.in_axes), self.shape)
        return jnp.einsum(eqn, x, w.astype(self.dtype))


class Attention(nn.Module):
    """Joint attention over the tokens of all active experts."""
    configs: Sequence[GemmaConfig]
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, xs, positions, mask, kv_cache, n_capture_rows: int):
        c0 = self.configs[0]
        n, k_heads, h = c0.num_heads, c0.num_kv_heads, c0.head_dim
        qs, ks, vs = [], [], []
        for i, (x, cfg) in enumerate(zip(xs, self.configs)):
            if x is None:
                continue
            x = x.astype(self.dtype)
            if k_heads == n:  # openpi fuses q/k/v into one einsum when there is no GQA
                qkv = Einsum((3, n, cfg.width, h), (2,), self.dtype, name=_name("qkv_einsum", i))
                q, k, v = qkv("BSD,CKDH->CBSKH", x)
            else:
                q = Einsum((n, cfg.width, h), (1,), self.dtype, name=_name("q_einsum", i))("BTD,NDH->BTNH", x)
                k, v = Einsum((2, k_heads, cfg.width, h), (2,), self.dtype,
                              name=_name("kv_einsum", i))("BSD,CKDH->CBSKH", x)
            qs.append(q), ks.append(k), vs.append(v)
        q, k, v = (jnp.concatenate(t, axis=1) for t in (qs, ks, vs))

        q = apply_rope(q, positions) * (h ** -0.5)
        k = apply_rope(k, positions)
        if kv_cache is not None:
            k = jnp.concatenate([kv_cache[0].astype(k.dtype), k], axis=1)
            v = jnp.concatenate([kv_cache[1].astype(v.dtype), v], axis=1)

        b, t = q.shape[:2]
        g = n // k_heads
        if mask.shape != (b, t, k.shape[1]):
            raise ValueError(f"attention mask: expected shape {(b, t, k.shape[1])}, got {mask.shape}")
        # Heads grouped over kv heads (GQA), laid out [B, K, G, T, H] so both products are plain
        # batched matmuls; openpi's [B, T, K, G, H] einsum lowers ~10x slower on XLA:CPU.
        q = q.reshape(b, t, k_heads, g, h).transpose(0, 2, 3, 1, 4)
        k_t, v_t = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        logits = jnp.einsum("BKGTH,BKSH->BKGTS", q, k_t, preferred_element_type=jnp.float32)
        logits = jnp.where(mask[:, None, None, :, :], logits, BIG_NEG)
        probs = jax.nn.softmax(logits, axis=-1)
        enc = jnp.einsum("BKGTS,BKSH->BKGTH", probs.astype(self.dtype), v_t)
        enc = enc.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)

        outs, start = [], 0
        for i, (x, cfg) in enumerate(zip(xs, self.configs)):
            if x is None:
                outs.append(None)
                continue
            end = start + x.shape[1]
            proj = Einsum((n, h, cfg.width), (0, 1), self.dtype, name=_name("attn_vec_einsum", i))
            outs.append(proj("BTNH,NHD->BTD", enc[:, start:end]))
            start = end
        # Only the last `n_capture_rows` query rows are kept for attention distillation.
        captured = probs.reshape(b, n, t, -1)[:, :, t - n_capture_rows:] if n_capture_rows else None
        return outs, (k, v), captured


def _gated_residual(x, y, gate):
    if x is None:
        return None
    return x + y if gate is None else x + y * gate


class Block(nn.Module):
    """One layer of the mixture. Scanned over depth; carry = (expert activations, captured attention)."""
    configs: Sequence[GemmaConfig]
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, carry, layer_idx, kv_layer, positions, mask, adarms_cond, capture_layers, n_capture_rows):
        xs, captured = carry
        normed, gates = [], []
        for i, x in enumerate(xs):
            if x is None:
                normed.append(None), gates.append(None)
                continue
            y, g = RMSNorm(name=_name("pre_attention_norm", i))(x, adarms_cond[i])
            normed.append(y), gates.append(g)
        attn_out, kv, probs = Attention(self.configs, self.dtype, name="attn")(
            normed, positions, mask, kv_layer, n_capture_rows)
        xs = [_gated_residual(x, y, g) for x, y, g in zip(xs, attn_out, gates)]

        out = []
        for i, (x, cfg) in enumerate(zip(xs, self.configs)):
            if x is None:
                out.append(None)
                continue
            y, g = RMSNorm(name=_name("pre_ffw_norm", i))(x, adarms_cond[i])
            y = FeedForward(cfg.width, cfg.mlp_dim, self.dtype, name=_name("mlp", i))(y)
            out.append(_gated_residual(x, y.astype(x.dtype), g))

        if capture_layers:
            # Select keeps only the requested layers' rows; other layers write nothing new.
            hit = layer_idx == jnp.asarray(capture_layers)
            captured = jnp.where(hit[:, None, None, None, None], probs[None].astype(captured.dtype), captured)
        return (tuple(out), captured), kv


class GemmaMixture(nn.Module):
    """`PaliGemma/llm` of openpi: token embedder, the scanned layer stack, one final norm per expert."""
    configs: Sequence[GemmaConfig]
    vocab_size: int
    adarms: bool  # π0.5: the expert's norms are conditioned on the time embedding
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    def setup(self):
        width = self.configs[0].width
        self.embedder = Embedder(self.vocab_size, width, name="embedder")
        # static_argnums count `self` as 0: 7=capture_layers, 8=n_capture_rows (of Block.__call__).
        block = nn.remat(Block, prevent_cse=False, static_argnums=(7, 8)) if self.remat else Block
        self.layers = nn.scan(
            block, variable_axes={"params": 0}, split_rngs={"params": True},
            in_axes=(0, 0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
            length=self.configs[0].depth)(self.configs, self.dtype)
        self.final_norms = [RMSNorm(name=_name("final_norm", i)) for i in range(len(self.configs))]

    def embed(self, tokens):
        return self.embedder(tokens).astype(self.dtype)

    def __call__(self, xs, positions, mask, adarms_cond=None, kv_cache=None,
                 capture_layers: tuple[int, ...] = (), n_capture_rows: int = 0):
        """Run the stack. Returns (per-expert outputs, per-layer (k, v), captured attention or None).

        `capture_layers`: layers whose attention probabilities of the last `n_capture_rows` query
        tokens are returned, as [len(capture_layers), B, heads, n_capture_rows, keys] float32.
        """
        adarms_cond = tuple(adarms_cond) if adarms_cond is not None else (None,) * len(xs)
        depth = self.configs[0].depth
        for l in capture_layers:
            if not 0 <= l < depth:
                raise ValueError(f"capture layer {l} out of range for depth {depth}")
        captured = None
        if capture_layers:
            b, t = mask.shape[:2]
            captured = jnp.zeros((len(capture_layers), b, self.configs[0].num_heads, n_capture_rows,
                                  mask.shape[2]), jnp.float32)
        xs = tuple(None if x is None else x.astype(self.dtype) for x in xs)
        (xs, captured), kv = self.layers((xs, captured), jnp.arange(depth), kv_cache, positions, mask,
                                         adarms_cond, tuple(capture_layers), n_capture_rows)
        outs = [None if x is None else norm(x, c)[0]
                for x, norm, c in zip(xs, self.final_norms, adarms_cond)]
        return outs, kv, captured


class Embedder(nn.Module):
    vocab_size: int
    width: int

    @nn.compact
    def __call__(self, tokens):
        # openpi's from-scratch init (std 0.01): with std 1 the sqrt(width) scaling below makes text tokens'
        # residual stream ~sqrt(width)x larger than image tokens', and a from-scratch model learns slowly.
        table = self.param("input_embedding", nn.initializers.normal(stddev=0.01), (self.vocab_size, self.width))
        # Gemma scales token embeddings by sqrt(width); image tokens are not scaled.
        return table[tokens] * jnp.sqrt(self.width).astype(table.dtype)
