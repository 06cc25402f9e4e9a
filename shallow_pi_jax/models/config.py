"""Model sizes as data. Every dimension of π0 / π0.5 is a field here; nothing else hard-codes one.

`ModelConfig.real(pi05=...)` gives openpi's released sizes (PaliGemma 2B + Gemma 300M expert +
SigLIP So400m/14), `tiny_config` one small enough for smoke tests. A config can also be read back
from an openpi fixture's `config.json` or inferred from a checkpoint's param shapes (`from_param_shapes`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: tuple[int, int] = (14, 14)


GEMMA_2B = GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256)
GEMMA_300M = GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256)
SO400M_14 = SiglipConfig(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=(14, 14))
PALIGEMMA_VOCAB = 257_152


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    pi05: bool
    llm: GemmaConfig
    expert: GemmaConfig
    siglip: SiglipConfig
    vocab_size: int = PALIGEMMA_VOCAB
    action_dim: int = 32
    action_horizon: int = 50
    max_token_len: int = 48
    image_keys: tuple[str, ...] = IMAGE_KEYS
    image_size: tuple[int, int] = (224, 224)
    # Compute dtype of matmuls; norms and softmax always run in float32 (as openpi does).
    dtype: str = "float32"
    # Rematerialise each transformer layer in the backward pass (memory for compute).
    remat: bool = False

    def __post_init__(self):
        if self.llm.depth != self.expert.depth:
            raise ValueError(
                f"llm.depth ({self.llm.depth}) must equal expert.depth ({self.expert.depth}): "
                "the two experts share attention layer by layer")
        for name in ("num_heads", "num_kv_heads", "head_dim"):
            a, b = getattr(self.llm, name), getattr(self.expert, name)
            if a != b:
                raise ValueError(f"llm.{name} ({a}) must equal expert.{name} ({b}) for shared attention")
        if self.llm.num_heads % self.llm.num_kv_heads:
            raise ValueError(f"num_heads ({self.llm.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.llm.num_kv_heads})")
        for i, (s, p) in enumerate(zip(self.image_size, self.siglip.patch_size)):
            if s % p:
                raise ValueError(f"image_size[{i}]={s} is not a multiple of siglip.patch_size[{i}]={p}")

    @property
    def depth(self) -> int:
        return self.llm.depth

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size[0] // self.siglip.patch_size[0]) * (self.image_size[1] // self.siglip.patch_size[1])

    @property
    def prefix_len(self) -> int:
        return len(self.image_keys) * self.tokens_per_image + self.max_token_len

    @property
    def suffix_len(self) -> int:
        return self.action_horizon + (0 if self.pi05 else 1)

    def with_depth(self, depth: int) -> ModelConfig:
        return dataclasses.replace(self, llm=dataclasses.replace(self.llm, depth=depth),
                                   expert=dataclasses.replace(self.expert, depth=depth))

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelConfig:
        d = dict(d)
        d["llm"] = GemmaConfig(**d["llm"])
        d["expert"] = GemmaConfig(**d["expert"])
        sig = dict(d["siglip"])
        sig["patch_size"] = tuple(sig["patch_size"])
        d["siglip"] = SiglipConfig(**sig)
        d["image_keys"] = tuple(d["image_keys"])
        d["image_size"] = tuple(d["image_size"])
        return cls(**d)

    @classmethod
    def real(cls, pi05: bool = True, **overrides) -> ModelConfig:
        """openpi's released π0 / π0.5 sizes (π0.5 uses 200 prompt tokens, π0 48)."""
        base = dict(pi05=pi05, llm=GEMMA_2B, expert=GEMMA_300M, siglip=SO400M_14,
                    max_token_len=200 if pi05 else 48, action_horizon=50)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_fixture(cls, path, **overrides) -> ModelConfig:
        """Read the `config.json` written next to openpi's tiny reference fixtures."""
        with open(path) as f:
            c = json.load(f)
        sig = c["siglip"]
        base = dict(
            pi05=bool(c["pi05"]),
            llm=GemmaConfig(**{k: c["gemma_llm"][k] for k in GemmaConfig.__dataclass_fields__}),
            expert=GemmaConfig(**{k: c["gemma_expert"][k] for k in GemmaConfig.__dataclass_fields__}),
            siglip=SiglipConfig(width=sig["width"], depth=sig["depth"], mlp_dim=sig["mlp_dim"],
                                num_heads=sig["num_heads"], patch_size=tuple(sig["patch_size"])),
            vocab_size=c["vocab_size"], action_dim=c["action_dim"], action_horizon=c["action_horizon"],
            max_token_len=c["max_token_len"], image_keys=tuple(c["image_keys"]),
            image_size=tuple(c["image_resolution"]), dtype=c.get("dtype", "float32"))
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_param_shapes(cls, shapes: Mapping[str, tuple], **overrides) -> ModelConfig:
        """Infer every size that a checkpoint determines from its '/'-joined param shapes.

        What the tree cannot tell (horizon, prompt length, camera names) comes from `overrides`
        or the defaults. π0 vs π0.5 is read from the heads present, never from a path string.
        """
        def get(path):
            if path not in shapes:
                raise ValueError(f"checkpoint has no leaf '{path}'; is it an openpi π0/π0.5 params tree?")
            return tuple(shapes[path])

        def gemma(suffix: str, width: int) -> GemmaConfig:
            depth = get(f"PaliGemma/llm/layers/mlp{suffix}/linear")[0]
            mlp_dim = get(f"PaliGemma/llm/layers/mlp{suffix}/linear")[1]
            qkv = f"PaliGemma/llm/layers/attn/qkv_einsum{suffix}/w"
            if qkv in shapes:  # openpi uses a fused qkv einsum when kv heads == heads
                _, _, n, _, h = get(qkv)
                k = n
            else:
                _, n, _, h = get(f"PaliGemma/llm/layers/attn/q_einsum{suffix}/w")
                _, _, k, _, _ = get(f"PaliGemma/llm/layers/attn/kv_einsum{suffix}/w")
            return GemmaConfig(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=n, num_kv_heads=k, head_dim=h)

        vocab, width = get("PaliGemma/llm/embedder/input_embedding")
        expert_width = get("action_in_proj/kernel")[1]
        ph, pw, _, vit_width = get("PaliGemma/img/embedding/kernel")
        n_tok = get("PaliGemma/img/pos_embedding")[1]
        side = int(round(math.sqrt(n_tok)))
        if side * side != n_tok:
            raise ValueError(f"PaliGemma/img/pos_embedding has {n_tok} tokens, not a square grid")
        _, _, vit_heads, _ = get("PaliGemma/img/Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel")
        vit_depth, _, vit_mlp = get("PaliGemma/img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel")
        base = dict(
            pi05=is_pi05_tree(shapes),
            llm=gemma("", width), expert=gemma("_1", expert_width),
            siglip=SiglipConfig(width=vit_width, depth=vit_depth, mlp_dim=vit_mlp, num_heads=vit_heads,
                                patch_size=(ph, pw)),
            vocab_size=vocab, action_dim=get("action_in_proj/kernel")[0],
            image_size=(side * ph, side * pw))
        base.update(overrides)
        return cls(**base)


def tiny_config(depth: int = 2, pi05: bool = True, cameras=("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"),
                action_dim: int = 8, action_horizon: int = 5, max_token_len: int = 40,
                image_size: int = 16, vocab_size: int = 400) -> ModelConfig:
    """A model of a few thousand parameters with every part of the real one: smoke tests, FLOP tables."""
    return ModelConfig(
        pi05=pi05,
        llm=GemmaConfig(width=32, depth=depth, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=8),
        expert=GemmaConfig(width=16, depth=depth, mlp_dim=32, num_heads=2, num_kv_heads=1, head_dim=8),
        siglip=SiglipConfig(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=(8, 8)),
        vocab_size=vocab_size, action_dim=action_dim, action_horizon=action_horizon, max_token_len=max_token_len,
        image_keys=tuple(cameras), image_size=(image_size, image_size))


def is_pi05_tree(flat_shapes: Mapping[str, Any]) -> bool:
    """π0.5 from a '/'-joined params tree: only π0.5 has the time MLP that feeds adaRMSNorm."""
    return "time_mlp_in/kernel" in flat_shapes


def default_max_token_len(pi05: bool) -> int:
    """openpi's Pi0Config default prompt length: 200 tokens for π0.5, 48 for π0."""
    return 200 if pi05 else 48
