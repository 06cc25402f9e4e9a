"""SigLIP vision tower as openpi uses it: a pre-LN ViT with a learned position embedding, no pooling,
and a linear head that maps every patch token to the LLM width.

Param names follow big_vision's ViT (`embedding`, `pos_embedding`, `Transformer/encoderblock/...`,
`Transformer/encoder_norm`, `head`), with the blocks stacked on axis 0 by `nn.scan`.

Axis letters in shape comments (this file has no einsum strings):
    B  batch
    H  image height in pixels (not a head dim, unlike gemma.py)
    W  image width in pixels
    3  RGB channels
After the patch conv, the lowercase `h`, `w`, `d` in `Siglip.__call__` are the patch grid's rows,
columns and the ViT width; `num_patches` = h * w.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from shallow_pi_jax.models.config import SiglipConfig


class MlpBlock(nn.Module):
    mlp_dim: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = nn.Dense(self.mlp_dim, dtype=self.dtype)(x)
        x = nn.gelu(x, approximate=True)
        return nn.Dense(width, dtype=self.dtype)(x)


class Encoder1DBlock(nn.Module):
    num_heads: int
    mlp_dim: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, _):
        y = nn.LayerNorm(epsilon=1e-6)(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype)(y, y)
        x = x + y
        y = nn.LayerNorm(epsilon=1e-6)(x)
        x = x + MlpBlock(self.mlp_dim, self.dtype)(y)
        return x, None


class Encoder(nn.Module):
    config: SiglipConfig
    dtype: jnp.dtype
    remat: bool = False

    @nn.compact
    def __call__(self, x):
        block = nn.remat(Encoder1DBlock, prevent_cse=False) if self.remat else Encoder1DBlock
        stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=nn.broadcast, length=self.config.depth)
        x, _ = stack(self.config.num_heads, self.config.mlp_dim, self.dtype, name="encoderblock")(x, None)
        return nn.LayerNorm(epsilon=1e-6, name="encoder_norm")(x)


class Siglip(nn.Module):
    """[B, H, W, 3] float images in [-1, 1] → [B, num_patches, out_width] tokens."""
    config: SiglipConfig
    num_patches: int
    out_width: int
    dtype: jnp.dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, images):
        c = self.config
        x = nn.Conv(c.width, kernel_size=c.patch_size, strides=c.patch_size, padding="VALID",
                    name="embedding", dtype=self.dtype)(images.astype(jnp.float32))
        b, h, w, d = x.shape
        x = x.reshape(b, h * w, d)
        pos = self.param("pos_embedding", nn.initializers.normal(stddev=1 / d ** 0.5), (1, self.num_patches, d))
        x = x + pos.astype(x.dtype)
        x = Encoder(c, self.dtype, self.remat, name="Transformer")(x)
        return nn.Dense(self.out_width, name="head", dtype=self.dtype)(x)
