"""PyTorch inference model of π0 / π0.5 at any size and depth, with openpi's PyTorch state-dict names.

The module tree mirrors openpi's PyTorch port (`PI0Pytorch`) so that `state_dict()` has exactly its
keys and shapes: a file written by `python -m shallow_pi_jax.export_torch` loads into openpi's port, and openpi's
`model.safetensors` loads into this one. The math follows openpi's JAX model (not its PyTorch port,
which builds the time embedding in float64), so outputs match the JAX teacher / student.

Written for export: real-valued RoPE, no complex numbers, no data-dependent control flow, the KV
cache as two stacked tensors `[layers, B, S, kv_heads, head_dim]`, and every shape derived from the
inputs, so `torch.onnx.export` traces a graph with a dynamic batch.

    from shallow_pi_jax.export.torch_model import Pi0Torch, load_pretrained
    model = load_pretrained("export_dir")              # config.json + model.safetensors
    actions = model.sample_actions(obs, noise=noise)   # obs: the project's batch dict of tensors

Axis letters in shape comments (this file has no einsum strings; some letters carry two meanings,
told apart by where they appear):
    B        batch
    T        query tokens; in `make_attn_mask` the whole sequence, so its [B, T, T] is [batch, query, key]
    S        key/value tokens in attention (cached keys, then the new ones) and in the KV cache;
             in `embed_suffix` the suffix tokens
    S_cache  tokens held in a KV cache passed to `run_layers` (the prefix, P)
    P        prefix tokens (image tokens of every camera, then prompt tokens; sample_actions leaves
             out masked cameras and prompt padding, see `compact_plan`)
    L        layers (the stacked KV cache's leading axis)
    N        query heads
    K        key/value heads
    G        query heads per key/value head, N // K; a literal 1 marks a broadcast axis
    H        head dim in attention, RoPE and the KV cache; in the policy API's [B,H] / [B,H,D]
             (`denoise_step`, `sample_actions`, `velocity`, `compute_loss`) the action horizon
    D        action dim (only in [B,H,D])
    W, h, w  in `SiglipEmbeddings.forward`: ViT width (channels), patch-grid rows, patch-grid columns
"""
from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from shallow_pi_jax.export.export_config import read_export_config
from shallow_pi_jax.models.config import GemmaConfig, ModelConfig, SiglipConfig
from shallow_pi_jax.models.prefix import PROMPT_BUCKETS, PrefixPlan, prefix_plan

# openpi's JAX attention masks logits with this value (not -inf) before a float32 softmax.
_BIG_NEG = -2.3819763e38
_RMS_EPS = 1e-6
_LN_EPS = 1e-6
_ROPE_BASE = 10_000.0

# The tied token embedding is stored once, under the lm_head name (what safetensors' save_model
# keeps, and what openpi's file holds).
TIED_KEY = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
TIED_STORED_AS = "paligemma_with_expert.paligemma.lm_head.weight"
# openpi's port carries an lm_head on the action expert that no forward pass uses.
UNUSED_KEY = "paligemma_with_expert.gemma_expert.lm_head.weight"

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _gelu(x):
    return F.gelu(x, approximate="tanh")


# ----------------------------------------------------------------------------- SigLIP

class SiglipAttention(nn.Module):
    def __init__(self, cfg: SiglipConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        if cfg.width % cfg.num_heads:
            raise ValueError(f"siglip.width ({cfg.width}) must be a multiple of siglip.num_heads ({cfg.num_heads})")
        self.head_dim = cfg.width // cfg.num_heads
        inner = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(cfg.width, inner)
        self.k_proj = nn.Linear(cfg.width, inner)
        self.v_proj = nn.Linear(cfg.width, inner)
        self.out_proj = nn.Linear(inner, cfg.width)

    def forward(self, x):
        b, t, _ = x.shape
        split = lambda y: y.reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q = split(self.q_proj(x)) * (self.head_dim ** -0.5)
        k, v = split(self.k_proj(x)), split(self.v_proj(x))
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)).float(), dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        return self.out_proj(out)


class SiglipMLP(nn.Module):
    def __init__(self, cfg: SiglipConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x):
        return self.fc2(_gelu(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, cfg: SiglipConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=_LN_EPS)
        self.self_attn = SiglipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=_LN_EPS)
        self.mlp = SiglipMLP(cfg)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, cfg: SiglipConfig):
        super().__init__()
        self.layers = nn.ModuleList(SiglipEncoderLayer(cfg) for _ in range(cfg.depth))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class SiglipEmbeddings(nn.Module):
    def __init__(self, cfg: SiglipConfig, num_patches: int):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, cfg.width, kernel_size=tuple(cfg.patch_size),
                                         stride=tuple(cfg.patch_size))
        self.position_embedding = nn.Embedding(num_patches, cfg.width)

    def forward(self, images_nhwc):
        x = self.patch_embedding(images_nhwc.permute(0, 3, 1, 2))  # B, W, h, w
        x = x.flatten(2).transpose(1, 2)  # row-major patches, as the JAX conv + reshape
        return x + self.position_embedding.weight[None].to(x.dtype)


class SiglipVisionTransformer(nn.Module):
    def __init__(self, cfg: SiglipConfig, num_patches: int):
        super().__init__()
        self.embeddings = SiglipEmbeddings(cfg, num_patches)
        self.encoder = SiglipEncoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.width, eps=_LN_EPS)

    def forward(self, images):
        return self.post_layernorm(self.encoder(self.embeddings(images)))


class SiglipVisionTower(nn.Module):
    def __init__(self, cfg: SiglipConfig, num_patches: int):
        super().__init__()
        self.vision_model = SiglipVisionTransformer(cfg, num_patches)

    def forward(self, images):
        return self.vision_model(images)


class MultiModalProjector(nn.Module):
    def __init__(self, vit_width: int, llm_width: int):
        super().__init__()
        self.linear = nn.Linear(vit_width, llm_width)

    def forward(self, x):
        return self.linear(x)


# ----------------------------------------------------------------------------- Gemma

class RMSNorm(nn.Module):
    """Gemma RMSNorm in float32: x * rsqrt(mean(x^2) + eps) * (1 + weight)."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))

    def forward(self, x, cond=None):
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + _RMS_EPS)
        return (normed * (1.0 + self.weight.float())).to(x.dtype), None


class AdaRMSNorm(nn.Module):
    """π0.5 expert norm: a Dense on the time condition gives (scale, shift, gate)."""

    def __init__(self, width: int, cond_width: int):
        super().__init__()
        self.dense = nn.Linear(cond_width, 3 * width)

    def forward(self, x, cond):
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + _RMS_EPS)
        scale, shift, gate = self.dense(cond)[:, None, :].chunk(3, dim=-1)
        normed = normed * (1.0 + scale.float()) + shift.float()
        return normed.to(x.dtype), gate


class GemmaAttentionProj(nn.Module):
    """Per-expert projections; the attention itself is joint over both experts' tokens."""

    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.q_proj = nn.Linear(cfg.width, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.width, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.width, bias=False)


class GemmaMLP(nn.Module):
    def __init__(self, cfg: GemmaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.up_proj = nn.Linear(cfg.width, cfg.mlp_dim, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_dim, cfg.width, bias=False)

    def forward(self, x):
        return self.down_proj(_gelu(self.gate_proj(x)) * self.up_proj(x))


class GemmaDecoderLayer(nn.Module):
    def __init__(self, cfg: GemmaConfig, cond_width: int | None):
        super().__init__()
        norm = (lambda: RMSNorm(cfg.width)) if cond_width is None else (lambda: AdaRMSNorm(cfg.width, cond_width))
        self.input_layernorm = norm()
        self.self_attn = GemmaAttentionProj(cfg)
        self.post_attention_layernorm = norm()  # openpi's JAX name: pre_ffw_norm
        self.mlp = GemmaMLP(cfg)


class GemmaLanguageModel(nn.Module):
    def __init__(self, cfg: GemmaConfig, vocab_size: int | None, cond_width: int | None):
        super().__init__()
        if vocab_size is not None:
            self.embed_tokens = nn.Embedding(vocab_size, cfg.width)
        self.layers = nn.ModuleList(GemmaDecoderLayer(cfg, cond_width) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width) if cond_width is None else AdaRMSNorm(cfg.width, cond_width)


class PaliGemmaModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.vision_tower = SiglipVisionTower(cfg.siglip, cfg.tokens_per_image)
        self.multi_modal_projector = MultiModalProjector(cfg.siglip.width, cfg.llm.width)
        self.language_model = GemmaLanguageModel(cfg.llm, cfg.vocab_size, None)


class PaliGemma(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.model = PaliGemmaModel(cfg)
        self.lm_head = nn.Linear(cfg.llm.width, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.model.language_model.embed_tokens.weight  # tied, as in PaliGemma


class GemmaExpert(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.model = GemmaLanguageModel(cfg.expert, None, cfg.expert.width if cfg.pi05 else None)
        self.lm_head = nn.Linear(cfg.expert.width, cfg.vocab_size, bias=False)  # unused; keeps openpi's keys


class PaliGemmaWithExpert(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.paligemma = PaliGemma(cfg)
        self.gemma_expert = GemmaExpert(cfg)


# ----------------------------------------------------------------------------- helpers

def make_attn_mask(input_mask: torch.Tensor, ar_mask: torch.Tensor) -> torch.Tensor:
    """Token i attends j iff cumsum(ar)[j] <= cumsum(ar)[i] and both are valid. -> bool [B, T, T]."""
    cum = torch.cumsum(ar_mask.to(torch.int32).expand_as(input_mask), dim=1)
    mask = cum[:, None, :] <= cum[:, :, None]
    return mask & input_mask[:, None, :] & input_mask[:, :, None]


def posemb_sincos(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """sin/cos time embedding (sin half first); `freqs` from `float32_constants`."""
    x = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(x), torch.cos(x)], dim=-1)


def float32_constants(expert_width: int, head_dim: int) -> dict[str, np.ndarray]:
    """The two float32 constant vectors of the model, bit-identical to openpi's JAX ones.

    `time_freqs` = 2π / period for the sin/cos time embedding (periods 4e-3..4, geometric) and
    `rope_timescale` = 10000^(2i/head_dim). Both come out of float32 `linspace` / `pow` in XLA, which
    differ from numpy's by a few ulp; since the time embedding's sin arguments reach 2π/4e-3 ≈ 1571
    rad and RoPE's reach the prompt length, one ulp moves the output by ~1e-4. So they are computed
    with JAX on CPU when it is importable (the export side) and stored in the export's config.json,
    so a deployment without JAX reproduces them exactly. Without JAX: correctly rounded values.
    """
    if expert_width % 2:
        raise ValueError(f"expert width must be even for the time embedding, got {expert_width}")
    n = expert_width // 2
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:  # deployment machine: float64 math, rounded once
        period = 4e-3 * (4.0 / 4e-3) ** np.linspace(0.0, 1.0, n)
        return {"time_freqs": (2 * np.pi / period).astype(np.float32),
                "rope_timescale": (10_000.0 ** ((2.0 / head_dim) * np.arange(head_dim // 2))).astype(np.float32)}
    with jax.default_device(jax.devices("cpu")[0]):
        # Same expressions, same operation order as openpi's posemb_sincos and _apply_rope.
        fraction = jnp.linspace(0.0, 1.0, n)
        period = 4e-3 * (4.0 / 4e-3) ** fraction
        freqs = 1.0 / period * 2 * jnp.pi
        exps = (2.0 / head_dim) * jnp.arange(head_dim // 2, dtype=jnp.float32)
        timescale = 10_000.0 ** exps
        return {"time_freqs": np.asarray(freqs, np.float32), "rope_timescale": np.asarray(timescale, np.float32)}


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, N, H]; cos/sin [B, T, 1, H/2] float32. Split-half rotation, computed in float32."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


# ----------------------------------------------------------------------------- the policy

class Pi0Torch(nn.Module):
    """π0 / π0.5 with openpi's PyTorch parameter names; inference only (sample_actions, velocity)."""

    def __init__(self, config: ModelConfig, constants: Mapping[str, Sequence[float]] | None = None):
        super().__init__()
        self.config = config
        if constants is None:
            constants = float32_constants(config.expert.width, config.llm.head_dim)
        self.constants = {k: np.asarray(constants[k], np.float32) for k in ("time_freqs", "rope_timescale")}
        self.paligemma_with_expert = PaliGemmaWithExpert(config)
        e = config.expert.width
        self.action_in_proj = nn.Linear(config.action_dim, e)
        self.action_out_proj = nn.Linear(e, config.action_dim)
        if config.pi05:
            self.time_mlp_in = nn.Linear(e, e)
            self.time_mlp_out = nn.Linear(e, e)
        else:
            self.state_proj = nn.Linear(config.action_dim, e)
            self.action_time_mlp_in = nn.Linear(2 * e, e)
            self.action_time_mlp_out = nn.Linear(e, e)
        # float32 constants, deliberately not buffers: outside the state dict, and `.to(bfloat16)`
        # must not round them (one ulp of a time frequency moves the embedding by ~1e-4).
        self._time_freqs = torch.from_numpy(self.constants["time_freqs"].copy())
        self._rope_timescale = torch.from_numpy(self.constants["rope_timescale"].copy())
        if self._time_freqs.shape != (e // 2,) or self._rope_timescale.shape != (config.llm.head_dim // 2,):
            raise ValueError(f"constants: time_freqs {tuple(self._time_freqs.shape)} / rope_timescale "
                             f"{tuple(self._rope_timescale.shape)}, "
                             f"expected ({e // 2},) / ({config.llm.head_dim // 2},)")

    # -- pieces ---------------------------------------------------------------------------
    @property
    def _llm(self) -> GemmaLanguageModel:
        return self.paligemma_with_expert.paligemma.model.language_model

    @property
    def _expert(self) -> GemmaLanguageModel:
        return self.paligemma_with_expert.gemma_expert.model

    @property
    def dtype(self) -> torch.dtype:
        return self.action_in_proj.weight.dtype

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        pg = self.paligemma_with_expert.paligemma.model
        return pg.multi_modal_projector(pg.vision_tower(images.to(self.dtype)))

    def embed_prefix(self, images: Sequence[torch.Tensor], image_masks: Sequence[torch.Tensor],
                     tokens: torch.Tensor, token_mask: torch.Tensor):
        """Image tokens per camera (unscaled), then prompt embeddings × √width. -> (embs, mask)."""
        embs, masks = [], []
        for img, m in zip(images, image_masks):
            t = self.embed_image(img)
            embs.append(t)
            masks.append(m.to(torch.bool)[:, None].expand(-1, t.shape[1]))
        emb = self._llm.embed_tokens(tokens.to(torch.int64))
        embs.append(emb * torch.tensor(math.sqrt(emb.shape[-1]), dtype=torch.float32).to(emb.dtype))
        masks.append(token_mask.to(torch.bool))
        return torch.cat(embs, dim=1), torch.cat(masks, dim=1)

    def embed_suffix(self, state, x_t, time):
        """-> (suffix tokens, suffix ar mask [S] bool, adarms cond or None)."""
        c = self.config
        x_t = x_t.to(self.dtype)
        action_tokens = self.action_in_proj(x_t)
        temb = posemb_sincos(time, self._time_freqs.to(x_t.device)).to(self.dtype)
        horizon = x_t.shape[1]
        if c.pi05:
            cond = F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(temb))))
            tokens = action_tokens
            ar = [True] + [False] * (horizon - 1)
        else:
            cond = None
            tt = temb[:, None, :].expand(-1, horizon, -1)
            at = self.action_time_mlp_out(F.silu(self.action_time_mlp_in(torch.cat([action_tokens, tt], dim=-1))))
            state_tok = self.state_proj(state.to(self.dtype))[:, None, :]
            tokens = torch.cat([state_tok, at], dim=1)
            ar = [True, True] + [False] * (horizon - 1)
        return tokens, torch.tensor(ar, dtype=torch.bool, device=x_t.device), cond

    def _rope(self, positions: torch.Tensor):
        radians = positions.float()[..., None] / self._rope_timescale.to(positions.device)
        radians = radians[:, :, None, :]
        return torch.cos(radians), torch.sin(radians)

    def _attention(self, q, k, v, mask):
        """q [B,T,N,H] (already scaled), k/v [B,S,K,H], mask bool [B,T,S] -> [B,T,N*H]."""
        b, t, n, h = q.shape
        kv = k.shape[2]
        qg = q.reshape(b, t, kv, n // kv, h).permute(0, 2, 3, 1, 4)  # B K G T H
        kg = k.permute(0, 2, 1, 3)[:, :, None]  # B K 1 S H
        vg = v.permute(0, 2, 1, 3)[:, :, None]
        logits = torch.matmul(qg, kg.transpose(-1, -2)).float()
        logits = torch.where(mask[:, None, None], logits, torch.tensor(_BIG_NEG, dtype=torch.float32))
        probs = torch.softmax(logits, dim=-1).to(v.dtype)
        out = torch.matmul(probs, vg)  # B K G T H
        return out.permute(0, 3, 1, 2, 4).reshape(b, t, n * h)

    def run_layers(self, xs, positions, mask, cond=None, kv_cache=None, return_cache=False):
        """Joint transformer over [prefix (llm) tokens or None, suffix (expert) tokens or None].

        `kv_cache` = (k, v) [L, B, S_cache, K, H] from a previous prefix pass; its keys precede the
        new tokens. Returns ([prefix_out, suffix_out], (k, v) stacked over layers or None).
        """
        c = self.config
        stacks = [self._llm, self._expert]
        conds = [None, cond]
        cos, sin = self._rope(positions)
        # Rows that may attend nothing (padding, masked cameras) would give all-equal logits; letting
        # them attend to themselves keeps the junk rows finite under any low-precision -inf, and
        # changes no valid row (valid queries never see invalid keys).
        n_new, n_all = mask.shape[1], mask.shape[2]
        rows = torch.arange(n_new, device=mask.device) + (n_all - n_new)  # new tokens follow the cache
        self_diag = rows[:, None] == torch.arange(n_all, device=mask.device)[None, :]
        mask = mask | (self_diag[None] & ~mask.any(dim=-1, keepdim=True))
        ks, vs = [], []
        scale = c.llm.head_dim ** -0.5
        for i in range(c.depth):
            layers = [s.layers[i] for s in stacks]
            qs, kk, vv, gates = [], [], [], []
            for x, layer, cd in zip(xs, layers, conds):
                if x is None:
                    continue
                h, gate = layer.input_layernorm(x, cd)
                gates.append(gate)
                b, t, _ = h.shape
                a = layer.self_attn
                qs.append(a.q_proj(h).reshape(b, t, -1, c.llm.head_dim))
                kk.append(a.k_proj(h).reshape(b, t, -1, c.llm.head_dim))
                vv.append(a.v_proj(h).reshape(b, t, -1, c.llm.head_dim))
            q, k, v = torch.cat(qs, 1), torch.cat(kk, 1), torch.cat(vv, 1)
            q = apply_rope(q, cos, sin) * torch.tensor(scale, dtype=torch.float32).to(q.dtype)
            k = apply_rope(k, cos, sin)
            if return_cache:
                ks.append(k)
                vs.append(v)
            if kv_cache is not None:
                k = torch.cat([kv_cache[0][i], k], dim=1)
                v = torch.cat([kv_cache[1][i], v], dim=1)
            att = self._attention(q, k, v, mask)
            new_xs, start, gi = [], 0, 0
            for x, layer, cd in zip(xs, layers, conds):
                if x is None:
                    new_xs.append(None)
                    continue
                end = start + x.shape[1]
                y = layer.self_attn.o_proj(att[:, start:end])
                start = end
                gate = gates[gi]
                gi += 1
                x = x + (y if gate is None else y * gate)
                h, gate2 = layer.post_attention_layernorm(x, cd)
                y = layer.mlp(h)
                x = x + (y if gate2 is None else y * gate2)
                new_xs.append(x)
            xs = new_xs
        outs = [None if x is None else s.norm(x, cd)[0] for x, s, cd in zip(xs, stacks, conds)]
        cache = (torch.stack(ks), torch.stack(vs)) if return_cache else None
        return outs, cache

    # -- policy API -----------------------------------------------------------------------
    def _obs_parts(self, obs: Mapping, plan: PrefixPlan | None = None):
        """(images, image masks, prompt tokens, prompt mask) of the prefix; with `plan`, only its
        cameras and its first `prompt_len` prompt slots (models/prefix.py: exact when the plan
        comes from this batch's masks)."""
        keys = self.config.image_keys
        missing = [k for k in keys if k not in obs["images"]]
        if missing:
            raise ValueError(f"observation images: missing cameras {missing}; expected {list(keys)}")
        b = torch.as_tensor(obs["images"][keys[0]]).shape[0]
        masks = {k: torch.as_tensor(obs.get("image_masks", {}).get(k, np.ones(b, bool))) for k in keys}
        tokens, tmask = torch.as_tensor(obs["tokenized_prompt"]), torch.as_tensor(obs["tokenized_prompt_mask"])
        if plan is not None:
            plan.check(self.config)
            keys, tokens, tmask = plan.cameras, tokens[:, :plan.prompt_len], tmask[:, :plan.prompt_len]
        return [torch.as_tensor(obs["images"][k]) for k in keys], [masks[k] for k in keys], tokens, tmask

    def compact_plan(self, obs: Mapping, buckets: Sequence[int] = PROMPT_BUCKETS) -> PrefixPlan:
        """The compacted prefix for this batch: the same rule as the JAX Policy (models/prefix.py)."""
        b = np.asarray(obs["tokenized_prompt_mask"]).shape[0]
        masks = {k: np.asarray(obs.get("image_masks", {}).get(k, np.ones(b, bool))) for k in self.config.image_keys}
        return prefix_plan(self.config, masks, np.asarray(obs["tokenized_prompt_mask"]), buckets)

    def prefix_cache(self, images, image_masks, tokens, token_mask):
        """Vision + prompt through the backbone once. -> (k, v [L,B,P,K,H], prefix mask [B,P])."""
        prefix, pmask = self.embed_prefix(images, image_masks, tokens, token_mask)
        attn = make_attn_mask(pmask, torch.zeros(pmask.shape[1], dtype=torch.bool, device=pmask.device))
        positions = torch.cumsum(pmask.to(torch.int32), dim=1) - 1
        _, (k, v) = self.run_layers([prefix, None], positions, attn, return_cache=True)
        return k, v, pmask

    def denoise_step(self, state, k_cache, v_cache, prefix_mask, x_t, time):
        """One velocity evaluation of the expert against the cached prefix. -> v_t [B,H,D] float32."""
        suffix, ar, cond = self.embed_suffix(state, x_t, time)
        s = suffix.shape[1]
        smask = torch.ones_like(suffix[..., 0], dtype=torch.bool)
        suffix_attn = make_attn_mask(smask, ar)
        full = torch.cat([prefix_mask[:, None, :].expand(-1, s, -1), suffix_attn], dim=2)
        positions = prefix_mask.to(torch.int32).sum(-1, keepdim=True) + torch.cumsum(smask.to(torch.int32), 1) - 1
        (_, out), _ = self.run_layers([None, suffix], positions, full, cond=cond, kv_cache=(k_cache, v_cache))
        return self.action_out_proj(out[:, -x_t.shape[1]:]).float()

    @torch.no_grad()
    def sample_actions(self, obs: Mapping, noise=None, num_steps: int = 10, generator=None,
                       compact_prefix: bool = True):
        """Euler integration t = 1 -> 0 in `num_steps` steps with the prefix KV cache. -> [B,H,D].

        `compact_prefix`: cameras masked for the whole batch and the prompt padding past the batch's
        bucket leave the prefix (same actions, fewer tokens); False keeps openpi's prefix."""
        images, masks, tokens, tmask = self._obs_parts(obs, self.compact_plan(obs) if compact_prefix else None)
        b = images[0].shape[0]
        if noise is None:
            noise = torch.randn(b, self.config.action_horizon, self.config.action_dim, generator=generator)
        noise = torch.as_tensor(noise).float()
        state = torch.as_tensor(obs["state"])
        k, v, pmask = self.prefix_cache(images, masks, tokens, tmask)
        x = noise
        for t, dt in euler_schedule(num_steps):
            vt = self.denoise_step(state, k, v, pmask, x, torch.full((b,), t, dtype=torch.float32))
            x = x + torch.tensor(dt, dtype=torch.float32) * vt
        return x

    @torch.no_grad()
    def velocity(self, obs: Mapping, x_t, time):
        """v_t from one joint prefix+suffix pass (openpi's compute_loss path). -> [B,H,D] float32."""
        images, masks, tokens, tmask = self._obs_parts(obs)
        prefix, pmask = self.embed_prefix(images, masks, tokens, tmask)
        x_t = torch.as_tensor(x_t).float()
        suffix, s_ar, cond = self.embed_suffix(torch.as_tensor(obs["state"]), x_t, torch.as_tensor(time).float())
        smask = torch.ones(suffix.shape[:2], dtype=torch.bool)
        full_mask = torch.cat([pmask, smask], 1)
        ar = torch.cat([torch.zeros(pmask.shape[1], dtype=torch.bool), s_ar])
        attn = make_attn_mask(full_mask, ar)
        positions = torch.cumsum(full_mask.to(torch.int32), 1) - 1
        (_, out), _ = self.run_layers([prefix, suffix], positions, attn, cond=cond)
        return self.action_out_proj(out[:, -x_t.shape[1]:]).float()

    @torch.no_grad()
    def compute_loss(self, obs: Mapping, actions, noise, time):
        """Flow-matching loss per step, mean over the action dim. -> [B,H] float32."""
        actions, noise = torch.as_tensor(actions).float(), torch.as_tensor(noise).float()
        t = torch.as_tensor(time).float()[:, None, None]
        x_t = t * noise + (1 - t) * actions
        v = self.velocity(obs, x_t, torch.as_tensor(time).float())
        return ((v - (noise - actions)) ** 2).mean(-1)


def euler_schedule(num_steps: int) -> list[tuple[float, float]]:
    """(t, dt) per step, t accumulated in float32 exactly as openpi's JAX while-loop does."""
    if int(num_steps) < 1:
        raise ValueError(f"num_steps: expected >= 1, got {num_steps}")
    dt = np.float32(-1.0 / num_steps)
    t, out = np.float32(1.0), []
    while t >= -dt / 2:
        out.append((float(t), float(dt)))
        t = np.float32(t + dt)
    return out


# ----------------------------------------------------------------------------- loading

def file_keys(model: Pi0Torch) -> dict[str, tuple[int, ...]]:
    """Keys and shapes a model.safetensors must hold (the state dict minus the tied duplicate)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != TIED_KEY}


def check_state_dict(tensors: Mapping[str, object], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """Strict key/shape check; raises ValueError listing every missing, extra and mis-shaped key."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    bad = sorted(f"{k}: expected {tuple(expected[k])}, got {tuple(tensors[k].shape)}"
                 for k in set(expected) & set(tensors) if tuple(tensors[k].shape) != tuple(expected[k]))
    if missing or extra or bad:
        lines = [f"{what} does not match the model:"]
        for title, items in (("missing", missing), ("unexpected", extra), ("wrong shape", bad)):
            if items:
                lines.append(f"  {len(items)} {title}: " + "; ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
        raise ValueError("\n".join(lines))


def load_state(model: Pi0Torch, tensors: Mapping[str, torch.Tensor], what: str = "state dict") -> Pi0Torch:
    """Load file tensors (tied embedding stored once, as lm_head) strictly into `model`."""
    check_state_dict(tensors, file_keys(model), what)
    sd = dict(tensors)
    sd[TIED_KEY] = sd[TIED_STORED_AS]
    model.load_state_dict(sd, strict=True)
    return model


def load_pretrained(directory, dtype: str | torch.dtype | None = None, device="cpu") -> Pi0Torch:
    """Build the model from `directory/config.json`, load `directory/model.safetensors` strictly.

    dtype: None keeps the file's precision; otherwise the weights are cast after loading.
    """
    directory = pathlib.Path(directory)
    cfg, meta = read_export_config(directory / "config.json")
    tensors = load_file(str(directory / "model.safetensors"), device=str(device))
    with torch.device("meta"):
        model = Pi0Torch(cfg, meta.get("float32_constants"))
    model = model.to_empty(device=device).to(TORCH_DTYPES[meta.get("precision", "float32")])
    # to_empty breaks the lm_head/embed_tokens tie; restore it before loading.
    pg = model.paligemma_with_expert.paligemma
    pg.lm_head.weight = pg.model.language_model.embed_tokens.weight
    load_state(model, tensors, str(directory / "model.safetensors"))
    if dtype is not None:
        model = model.to(TORCH_DTYPES[dtype] if isinstance(dtype, str) else dtype)
    return model.eval().requires_grad_(False)
