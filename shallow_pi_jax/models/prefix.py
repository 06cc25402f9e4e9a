"""Exact prefix compaction for inference: which prefix tokens a batch actually needs.

    plan = prefix_plan(cfg, obs["image_masks"], obs["tokenized_prompt_mask"])   # host side, static
    model = CompactPi0(cfg, plan=plan)                                          # models/pi0.py

openpi's prefix is every camera's image tokens, then `max_token_len` prompt tokens. A token whose
input mask is false is never attended by a valid token (both ends must be valid) and does not move
any position (positions are the cumsum of the input mask), so removing it changes no valid token's
output. Two kinds are removed: the tokens of a camera masked for the whole batch, and the prompt
slots past the last valid prompt token of the batch. The prompt is cut to a bucket length, not the
exact longest prompt, so that a server compiles a handful of programs; the padding inside the bucket
(and per-example masks) stays masked, which is exact for the same reason.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shallow_pi_jax.models.config import ModelConfig

# LIBERO instructions are a few dozen tokens; longer prompts (π0.5's discrete state) land in 64/128.
PROMPT_BUCKETS = (32, 64, 128)


@dataclasses.dataclass(frozen=True)
class PrefixPlan:
    """The prefix a compacted model builds: `cameras`' image tokens, then `prompt_len` prompt tokens.

    Hashable, so it can be a static argument of a jitted sampler (one program per plan)."""
    cameras: tuple[str, ...]
    prompt_len: int

    def check(self, cfg: ModelConfig) -> None:
        unknown = [cam for cam in self.cameras if cam not in cfg.image_keys]
        if unknown:
            raise ValueError(f"prefix plan cameras: {unknown} not in the model's cameras {cfg.image_keys}")
        if list(self.cameras) != [cam for cam in cfg.image_keys if cam in self.cameras]:
            raise ValueError(f"prefix plan cameras: expected a subsequence of {cfg.image_keys} in that order, "
                             f"got {self.cameras}")
        if not 0 <= self.prompt_len <= cfg.max_token_len:
            raise ValueError(f"prefix plan prompt_len: expected 0..{cfg.max_token_len} (max_token_len), "
                             f"got {self.prompt_len}")

    def prefix_len(self, cfg: ModelConfig) -> int:
        return len(self.cameras) * cfg.tokens_per_image + self.prompt_len


def full_plan(cfg: ModelConfig) -> PrefixPlan:
    """openpi's prefix: every camera and the whole padded prompt."""
    return PrefixPlan(tuple(cfg.image_keys), cfg.max_token_len)


def prompt_buckets(max_token_len: int, buckets: Sequence[int] = PROMPT_BUCKETS) -> tuple[int, ...]:
    """The prompt lengths a compacted model may be built for: the buckets below max_token_len, and it."""
    if any(int(b) < 1 for b in buckets):
        raise ValueError(f"prompt buckets: expected positive lengths, got {tuple(buckets)}")
    return tuple(sorted({int(b) for b in buckets if b < max_token_len} | {int(max_token_len)}))


def prompt_bucket(n_tokens: int, max_token_len: int, buckets: Sequence[int] = PROMPT_BUCKETS) -> int:
    """The smallest bucket that holds `n_tokens` prompt tokens."""
    if not 0 <= n_tokens <= max_token_len:
        raise ValueError(f"prompt tokens: expected 0..{max_token_len} (max_token_len), got {n_tokens}")
    return next(b for b in prompt_buckets(max_token_len, buckets) if b >= n_tokens)


def used_prompt_len(prompt_mask) -> int:
    """1 + the index of the last valid prompt token over the batch (0 if none): every slot after it is
    padding for every example, whatever the mask looks like before it."""
    mask = np.asarray(prompt_mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"tokenized_prompt_mask: expected [batch, tokens], got shape {mask.shape}")
    valid = np.flatnonzero(mask.any(axis=0))
    return int(valid[-1]) + 1 if valid.size else 0


def active_cameras(cfg: ModelConfig, image_masks: Mapping[str, Any]) -> tuple[str, ...]:
    """Cameras whose mask is true for at least one example of the batch (host-side, static)."""
    return tuple(cam for cam in cfg.image_keys if bool(np.any(np.asarray(image_masks[cam]))))


def prefix_plan(cfg: ModelConfig, image_masks: Mapping[str, Any], prompt_mask,
                buckets: Sequence[int] = PROMPT_BUCKETS) -> PrefixPlan:
    """The smallest exact plan for this batch: the cameras valid for at least one example, and the
    prompt bucket that holds its longest prompt. Reads the masks on the host (they decide shapes)."""
    for cam in cfg.image_keys:
        if cam not in image_masks:
            raise ValueError(f"observation.image_masks is missing camera '{cam}'")
    cameras = active_cameras(cfg, image_masks)
    mask = np.asarray(prompt_mask, bool)
    if mask.ndim != 2 or mask.shape[1] != cfg.max_token_len:
        raise ValueError(f"observation.tokenized_prompt_mask: expected [batch, {cfg.max_token_len}], "
                         f"got shape {mask.shape}")
    return PrefixPlan(cameras, prompt_bucket(used_prompt_len(mask), cfg.max_token_len, buckets))
