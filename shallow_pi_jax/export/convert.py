"""Strict JAX (openpi param tree) -> PyTorch (openpi's PyTorch port names) weight conversion.

General in every size: query/key/value projections are reshaped from (heads, width, head_dim)
einsum kernels, so width need not equal heads × head_dim (openpi's own converter assumes it does).
Strict: the JAX tree must hold exactly the leaves the config implies, with exactly their shapes,
and the PyTorch side must come out as exactly the model's state-dict keys and shapes; anything
else is a ValueError listing every offending path.

Two names need a decision (openpi's file has them too):
- the token embedding is tied to `paligemma.lm_head.weight`; it is stored once, under that name;
- `gemma_expert.lm_head.weight` exists in openpi's port but no forward pass reads it and JAX has
  no such weight; it is written as zeros so the file is deterministic and loads strictly.

    from shallow_pi_jax.export.convert import convert_params
    tensors = convert_params(flat_params, cfg)          # {torch key: torch.Tensor}
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from shallow_pi_jax.export.torch_model import (
    TIED_STORED_AS,
    UNUSED_KEY,
    Pi0Torch,
    check_state_dict,
    file_keys,
)
from shallow_pi_jax.models.config import GemmaConfig, ModelConfig

_V = "paligemma_with_expert.paligemma.model.vision_tower.vision_model."
_MMP = "paligemma_with_expert.paligemma.model.multi_modal_projector.linear."
_LLM = "paligemma_with_expert.paligemma.model.language_model."
_EXP = "paligemma_with_expert.gemma_expert.model."
_IMG = "PaliGemma/img/"
_BLK = "PaliGemma/img/Transformer/encoderblock/"
_ATT = _BLK + "MultiHeadDotProductAttention_0/"


def _fused_qkv(g: GemmaConfig) -> bool:
    # openpi's Attention uses one qkv_einsum when every query head has its own kv head.
    return g.num_kv_heads == g.num_heads


def expected_jax_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every leaf of openpi's pure param tree for `cfg`, '/'-joined, with its shape."""
    s, g, e = cfg.siglip, cfg.llm, cfg.expert
    vh = s.width // s.num_heads
    ph, pw = s.patch_size
    L = cfg.depth
    out = {
        _IMG + "embedding/kernel": (ph, pw, 3, s.width), _IMG + "embedding/bias": (s.width,),
        _IMG + "pos_embedding": (1, cfg.tokens_per_image, s.width),
        _IMG + "Transformer/encoder_norm/scale": (s.width,), _IMG + "Transformer/encoder_norm/bias": (s.width,),
        _IMG + "head/kernel": (s.width, g.width), _IMG + "head/bias": (g.width,),
        "PaliGemma/llm/embedder/input_embedding": (cfg.vocab_size, g.width),
        "action_in_proj/kernel": (cfg.action_dim, e.width), "action_in_proj/bias": (e.width,),
        "action_out_proj/kernel": (e.width, cfg.action_dim), "action_out_proj/bias": (cfg.action_dim,),
    }
    for ln in ("LayerNorm_0", "LayerNorm_1"):
        out[f"{_BLK}{ln}/scale"] = out[f"{_BLK}{ln}/bias"] = (s.depth, s.width)
    out[_BLK + "MlpBlock_0/Dense_0/kernel"] = (s.depth, s.width, s.mlp_dim)
    out[_BLK + "MlpBlock_0/Dense_0/bias"] = (s.depth, s.mlp_dim)
    out[_BLK + "MlpBlock_0/Dense_1/kernel"] = (s.depth, s.mlp_dim, s.width)
    out[_BLK + "MlpBlock_0/Dense_1/bias"] = (s.depth, s.width)
    for qkv in ("query", "key", "value"):
        out[f"{_ATT}{qkv}/kernel"] = (s.depth, s.width, s.num_heads, vh)
        out[f"{_ATT}{qkv}/bias"] = (s.depth, s.num_heads, vh)
    out[_ATT + "out/kernel"] = (s.depth, s.num_heads, vh, s.width)
    out[_ATT + "out/bias"] = (s.depth, s.width)
    for sfx, c, ada in (("", g, False), ("_1", e, cfg.pi05)):
        a = "PaliGemma/llm/layers/attn/"
        if _fused_qkv(c):
            out[f"{a}qkv_einsum{sfx}/w"] = (L, 3, c.num_heads, c.width, c.head_dim)
        else:
            out[f"{a}q_einsum{sfx}/w"] = (L, c.num_heads, c.width, c.head_dim)
            out[f"{a}kv_einsum{sfx}/w"] = (L, 2, c.num_kv_heads, c.width, c.head_dim)
        out[f"{a}attn_vec_einsum{sfx}/w"] = (L, c.num_heads, c.head_dim, c.width)
        out[f"PaliGemma/llm/layers/mlp{sfx}/gating_einsum"] = (L, 2, c.width, c.mlp_dim)
        out[f"PaliGemma/llm/layers/mlp{sfx}/linear"] = (L, c.mlp_dim, c.width)
        for norm in ("pre_attention_norm", "pre_ffw_norm"):
            if ada:
                out[f"PaliGemma/llm/layers/{norm}{sfx}/Dense_0/kernel"] = (L, e.width, 3 * c.width)
                out[f"PaliGemma/llm/layers/{norm}{sfx}/Dense_0/bias"] = (L, 3 * c.width)
            else:
                out[f"PaliGemma/llm/layers/{norm}{sfx}/scale"] = (L, c.width)
        if ada:
            out[f"PaliGemma/llm/final_norm{sfx}/Dense_0/kernel"] = (e.width, 3 * c.width)
            out[f"PaliGemma/llm/final_norm{sfx}/Dense_0/bias"] = (3 * c.width,)
        else:
            out[f"PaliGemma/llm/final_norm{sfx}/scale"] = (c.width,)
    if cfg.pi05:
        heads = {"time_mlp_in": (e.width, e.width), "time_mlp_out": (e.width, e.width)}
    else:
        heads = {"state_proj": (cfg.action_dim, e.width), "action_time_mlp_in": (2 * e.width, e.width),
                 "action_time_mlp_out": (e.width, e.width)}
    for name, (i, o) in heads.items():
        out[f"{name}/kernel"] = (i, o)
        out[f"{name}/bias"] = (o,)
    return out


def check_jax_shapes(shapes: Mapping[str, tuple], cfg: ModelConfig) -> None:
    """ValueError listing missing, unexpected and mis-shaped leaves (all of them, not the first)."""
    expected = expected_jax_shapes(cfg)
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    bad = sorted(f"{k}: expected {expected[k]}, got {tuple(shapes[k])}"
                 for k in set(expected) & set(shapes) if tuple(shapes[k]) != expected[k])
    if missing or extra or bad:
        lines = [f"JAX params do not match the config (pi05={cfg.pi05}, depth={cfg.depth}):"]
        for title, items in (("missing", missing), ("unexpected", extra), ("wrong shape", bad)):
            if items:
                lines.append(f"  {len(items)} {title}: " + "; ".join(items))
        raise ValueError("\n".join(lines))


def _linear(kernel):
    """flax Dense kernel (in, out) -> torch Linear weight (out, in)."""
    return np.ascontiguousarray(np.asarray(kernel).T)


def _torch_items(cfg: ModelConfig):
    """Yield (jax path, fn(leaf) -> {torch key: array}) once per JAX leaf."""
    s = cfg.siglip
    yield _IMG + "embedding/kernel", lambda w: {_V + "embeddings.patch_embedding.weight": w.transpose(3, 2, 0, 1)}
    yield _IMG + "embedding/bias", lambda b: {_V + "embeddings.patch_embedding.bias": b}
    yield _IMG + "pos_embedding", lambda p: {_V + "embeddings.position_embedding.weight": p[0]}
    yield _IMG + "Transformer/encoder_norm/scale", lambda x: {_V + "post_layernorm.weight": x}
    yield _IMG + "Transformer/encoder_norm/bias", lambda x: {_V + "post_layernorm.bias": x}
    yield _IMG + "head/kernel", lambda w: {_MMP + "weight": _linear(w)}
    yield _IMG + "head/bias", lambda b: {_MMP + "bias": b}

    def per_layer(name, fn, n):
        return lambda w: {f"{_V}encoder.layers.{i}.{name}": fn(w[i]) for i in range(n)}

    for ln, tn in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2")):
        yield f"{_BLK}{ln}/scale", per_layer(f"{tn}.weight", lambda x: x, s.depth)
        yield f"{_BLK}{ln}/bias", per_layer(f"{tn}.bias", lambda x: x, s.depth)
    for d, tn in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
        yield f"{_BLK}MlpBlock_0/{d}/kernel", per_layer(f"mlp.{tn}.weight", _linear, s.depth)
        yield f"{_BLK}MlpBlock_0/{d}/bias", per_layer(f"mlp.{tn}.bias", lambda x: x, s.depth)
    for j, tn in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        yield f"{_ATT}{j}/kernel", per_layer(f"self_attn.{tn}.weight", lambda w: _linear(w.reshape(w.shape[0], -1)),
                                             s.depth)
        yield f"{_ATT}{j}/bias", per_layer(f"self_attn.{tn}.bias", lambda b: b.reshape(-1), s.depth)
    yield _ATT + "out/kernel", per_layer("self_attn.out_proj.weight", lambda w: _linear(w.reshape(-1, w.shape[-1])),
                                         s.depth)
    yield _ATT + "out/bias", per_layer("self_attn.out_proj.bias", lambda x: x, s.depth)

    yield "PaliGemma/llm/embedder/input_embedding", lambda w: {TIED_STORED_AS: w}
    L = cfg.depth

    def heads_dh(w):  # (N, D, H) -> (N*H, D)
        return np.ascontiguousarray(w.transpose(0, 2, 1).reshape(-1, w.shape[1]))

    for sfx, prefix, ada in (("", _LLM, False), ("_1", _EXP, cfg.pi05)):
        c = cfg.llm if sfx == "" else cfg.expert
        lay = lambda name, fn: (lambda w: {f"{prefix}layers.{i}.{name}": fn(w[i]) for i in range(L)})  # noqa: E731
        a = "PaliGemma/llm/layers/attn/"
        if _fused_qkv(c):
            yield f"{a}qkv_einsum{sfx}/w", lambda w, prefix=prefix: {
                f"{prefix}layers.{i}.self_attn.{n}_proj.weight": heads_dh(w[i][j])
                for i in range(L) for j, n in enumerate("qkv")}
        else:
            yield f"{a}q_einsum{sfx}/w", lay("self_attn.q_proj.weight", heads_dh)
            yield f"{a}kv_einsum{sfx}/w", lambda w, prefix=prefix: {
                f"{prefix}layers.{i}.self_attn.{n}_proj.weight": heads_dh(w[i][j])
                for i in range(L) for j, n in enumerate("kv")}
        yield f"{a}attn_vec_einsum{sfx}/w", lay("self_attn.o_proj.weight",
                                                lambda w: _linear(w.reshape(-1, w.shape[-1])))
        m = f"PaliGemma/llm/layers/mlp{sfx}/"
        yield m + "gating_einsum", lambda w, prefix=prefix: {
            **{f"{prefix}layers.{i}.mlp.gate_proj.weight": _linear(w[i][0]) for i in range(L)},
            **{f"{prefix}layers.{i}.mlp.up_proj.weight": _linear(w[i][1]) for i in range(L)}}
        yield m + "linear", lay("mlp.down_proj.weight", _linear)
        for jn, tn in (("pre_attention_norm", "input_layernorm"), ("pre_ffw_norm", "post_attention_layernorm")):
            if ada:
                yield f"PaliGemma/llm/layers/{jn}{sfx}/Dense_0/kernel", lay(f"{tn}.dense.weight", _linear)
                yield f"PaliGemma/llm/layers/{jn}{sfx}/Dense_0/bias", lay(f"{tn}.dense.bias", lambda x: x)
            else:
                yield f"PaliGemma/llm/layers/{jn}{sfx}/scale", lay(f"{tn}.weight", lambda x: x)
        if ada:
            yield f"PaliGemma/llm/final_norm{sfx}/Dense_0/kernel", lambda w, prefix=prefix: {
                f"{prefix}norm.dense.weight": _linear(w)}
            yield f"PaliGemma/llm/final_norm{sfx}/Dense_0/bias", lambda b, prefix=prefix: {
                f"{prefix}norm.dense.bias": b}
        else:
            yield f"PaliGemma/llm/final_norm{sfx}/scale", lambda x, prefix=prefix: {f"{prefix}norm.weight": x}

    heads = ["action_in_proj", "action_out_proj"]
    heads += (["time_mlp_in", "time_mlp_out"] if cfg.pi05
              else ["state_proj", "action_time_mlp_in", "action_time_mlp_out"])
    for h in heads:
        yield f"{h}/kernel", lambda w, h=h: {f"{h}.weight": _linear(w)}
        yield f"{h}/bias", lambda b, h=h: {f"{h}.bias": b}


def model_file_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Keys/shapes of model.safetensors for `cfg`, from a parameter-free (meta) model."""
    with torch.device("meta"):
        return file_keys(Pi0Torch(cfg))


def convert_params(params: Mapping[str, object] | Callable[[str], np.ndarray], cfg: ModelConfig,
                   dtype: torch.dtype = torch.float32, shapes: Mapping[str, tuple] | None = None,
                   progress: Callable[[str], object] | None = None) -> dict[str, torch.Tensor]:
    """JAX params -> {torch key: tensor} for model.safetensors.

    Args:
      params: flat {'/'-joined path: array} (e.g. `checkpoints.flatten_params(tree)`), or a callable
        path -> np.ndarray that reads one leaf at a time (then `shapes` is required) so a real-size
        checkpoint never sits in memory twice.
      cfg: the model config; the tree must match it exactly.
      dtype: dtype of the written tensors (conversion math is float32).
      progress: called with each JAX path after it is converted.
    """
    if callable(params):
        if shapes is None:
            raise ValueError("shapes: required when params is a reader function")
        get = params
    else:
        shapes = {k: tuple(np.shape(v)) for k, v in params.items()}
        get = lambda p: params[p]  # noqa: E731
    check_jax_shapes({k: tuple(v) for k, v in shapes.items()}, cfg)
    out: dict[str, torch.Tensor] = {}
    for path, fn in _torch_items(cfg):
        leaf = np.asarray(get(path), dtype=np.float32)
        for key, arr in fn(leaf).items():
            if key in out:
                raise AssertionError(f"converter bug: {key} produced twice")
            out[key] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(dtype)
        if progress is not None:
            progress(path)
    want = model_file_shapes(cfg)
    out[UNUSED_KEY] = torch.zeros(want[UNUSED_KEY], dtype=dtype)
    check_state_dict(out, want, "converted tensors")
    return out
