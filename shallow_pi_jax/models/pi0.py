"""π0 / π0.5 flow-matching policy, numerically openpi's, with openpi's param tree.

    model = Pi0(ModelConfig.from_fixture("tests/fixtures/openpi_tiny/pi05/config.json"))
    v_t = model.apply({"params": params}, obs, x_t, t, method=Pi0.velocity)
    loss = model.apply({"params": params}, rng, obs, actions, method=Pi0.compute_loss)       # [B, H]
    actions = model.apply({"params": params}, rng, obs, num_steps=10, method=Pi0.sample_actions)

Prefix = image tokens of every camera, then prompt tokens (bidirectional). Suffix = (π0: a state
token +) the noisy action tokens. The action expert attends to the prefix through shared attention.
At inference, `compacted(cfg, obs)` (a CompactPi0) leaves out of the prefix the cameras masked for
the whole batch and the prompt padding past a length bucket: same actions, fewer tokens (prefix.py).

Axis letters in shape comments (this file has no einsum strings; note that S and H do not mean what
they mean in gemma.py):
    B  batch
    P  prefix tokens (the prefix's cameras' image tokens, then its prompt tokens)
    S  suffix tokens (π0: 1 state token + H action tokens; π0.5: H action tokens)
    H  action horizon (action steps per chunk), not a head dim
    D  backbone (PaliGemma LLM) width, the prefix tokens' width
    E  action-expert width, the suffix tokens' width
    Q  query rows whose attention is captured (see `Pi0.forward`)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from shallow_pi_jax.models import masks
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.gemma import GemmaMixture
from shallow_pi_jax.models.observation import validate_observation
from shallow_pi_jax.models.prefix import PROMPT_BUCKETS, PrefixPlan, full_plan, prefix_plan
from shallow_pi_jax.models.siglip import Siglip


class Prefix(NamedTuple):
    tokens: jax.Array  # [B, P, D]
    mask: jax.Array  # [B, P] bool
    ar_mask: jax.Array  # [P] bool


class FlowTargets(NamedTuple):
    noise: jax.Array
    time: jax.Array
    x_t: jax.Array
    u_t: jax.Array


def flow_targets(rng, actions) -> FlowTargets:
    """openpi's noise/time draw: rng splits into (preprocess, noise, time); t ~ Beta(1.5, 1)·0.999 + 0.001.

    Shared by plain training and distillation so teacher and student see the same ε and t.
    """
    _, noise_rng, time_rng = jax.random.split(rng, 3)
    noise = jax.random.normal(noise_rng, actions.shape, actions.dtype)
    time = jax.random.beta(time_rng, 1.5, 1.0, actions.shape[:-2], actions.dtype) * 0.999 + 0.001
    t = time[..., None, None]
    return FlowTargets(noise, time, t * noise + (1 - t) * actions, noise - actions)


class PaliGemma(nn.Module):
    config: ModelConfig

    def setup(self):
        c = self.config
        dtype = jnp.dtype(c.dtype)
        self.img = Siglip(c.siglip, c.tokens_per_image, c.llm.width, dtype, c.remat)
        self.llm = GemmaMixture((c.llm, c.expert), c.vocab_size, adarms=c.pi05, dtype=dtype, remat=c.remat)


class Pi0(nn.Module):
    config: ModelConfig

    def setup(self):
        c = self.config
        width = c.expert.width
        self.PaliGemma = PaliGemma(c)
        # Heads stay float32 (openpi's nnx.Linear layers carry no compute dtype).
        self.action_in_proj = nn.Dense(width)
        self.action_out_proj = nn.Dense(c.action_dim)
        if c.pi05:
            self.time_mlp_in = nn.Dense(width)
            self.time_mlp_out = nn.Dense(width)
        else:
            self.state_proj = nn.Dense(width)
            self.action_time_mlp_in = nn.Dense(width)
            self.action_time_mlp_out = nn.Dense(width)

    # -- embeddings ------------------------------------------------------------------------
    def prefix_layout(self) -> PrefixPlan:
        """Which cameras and how many prompt tokens the prefix holds (openpi's: all of them)."""
        return full_plan(self.config)

    def embed_images(self, obs) -> jax.Array:
        """[B, cameras·tokens_per_image, D] image tokens of the prefix's cameras, in config order."""
        c = self.config
        b = obs["state"].shape[0]
        parts = [self.PaliGemma.img(obs["images"][cam]) for cam in self.prefix_layout().cameras]
        return jnp.concatenate(parts, axis=1) if parts else jnp.zeros((b, 0, c.llm.width), jnp.dtype(c.dtype))

    def embed_prefix(self, obs, image_tokens: Optional[jax.Array] = None) -> Prefix:
        c = self.config
        plan = self.prefix_layout()
        if image_tokens is None:
            image_tokens = self.embed_images(obs)
        n = plan.prompt_len
        lang = self.PaliGemma.llm.embed(obs["tokenized_prompt"][:, :n])
        b = lang.shape[0]
        image_mask = [jnp.repeat(obs["image_masks"][cam][:, None], c.tokens_per_image, axis=1) for cam in plan.cameras]
        image_mask = jnp.concatenate(image_mask, axis=1) if image_mask else jnp.zeros((b, 0), bool)
        tokens = jnp.concatenate([image_tokens.astype(lang.dtype), lang], axis=1)
        mask = jnp.concatenate([image_mask.astype(bool), obs["tokenized_prompt_mask"][:, :n].astype(bool)], axis=1)
        return Prefix(tokens, mask, jnp.zeros(tokens.shape[1], bool))

    def embed_suffix(self, obs, x_t, time):
        """Returns (tokens [B, S, E], mask [B, S], ar_mask [S], adarms_cond [B, E] or None)."""
        c = self.config
        b, h = x_t.shape[:2]
        action_tokens = self.action_in_proj(x_t)
        time_emb = masks.posemb_sincos(time, c.expert.width)
        if c.pi05:
            cond = nn.swish(self.time_mlp_out(nn.swish(self.time_mlp_in(time_emb))))
            tokens, adarms_cond = action_tokens, cond
            ar = [True] + [False] * (h - 1)
        else:
            state_token = self.state_proj(obs["state"])[:, None, :]
            time_tokens = jnp.broadcast_to(time_emb[:, None, :], (b, h, time_emb.shape[-1]))
            mixed = self.action_time_mlp_out(nn.swish(self.action_time_mlp_in(
                jnp.concatenate([action_tokens, time_tokens], axis=-1))))
            tokens, adarms_cond = jnp.concatenate([state_token, mixed], axis=1), None
            ar = [True, True] + [False] * (h - 1)
        return tokens, jnp.ones(tokens.shape[:2], bool), jnp.asarray(ar), adarms_cond

    # -- training forward ------------------------------------------------------------------
    def forward(self, obs, x_t, time, attn_layers: tuple[int, ...] = (), attn_queries: str = "action",
                prefix: Optional[Prefix] = None):
        """Velocity v_t [B, H, action_dim] for noisy actions x_t at times `time` [B].

        With `attn_layers`, also returns the attention probabilities at those layers only, as
        [len(attn_layers), B, heads, Q, P+S] float32: Q = the action-token queries
        (`attn_queries="action"`) or every token (`"all"`, the paper's collapsing ablation).
        Returns (v_t, attention or None, prefix mask [B, P]).
        """
        c = self.config
        validate_observation(c, obs, x_t)
        if prefix is None:
            prefix = self.embed_prefix(obs)
        suffix, suffix_mask, suffix_ar, cond = self.embed_suffix(obs, x_t, time)
        input_mask = jnp.concatenate([prefix.mask, suffix_mask], axis=1)
        ar = jnp.concatenate([prefix.ar_mask, suffix_ar])
        attn_mask = masks.make_attn_mask(input_mask, ar)
        positions = masks.positions_from_mask(input_mask)
        if attn_queries not in ("action", "all"):
            raise ValueError(f"attn_queries: expected 'action' or 'all', got {attn_queries!r}")
        rows = c.action_horizon if attn_queries == "action" else input_mask.shape[1]
        (_, suffix_out), _, attn = self.PaliGemma.llm(
            [prefix.tokens, suffix], positions, attn_mask, adarms_cond=[None, cond],
            capture_layers=tuple(attn_layers), n_capture_rows=rows if attn_layers else 0)
        v_t = self.action_out_proj(suffix_out[:, -c.action_horizon:].astype(jnp.float32))
        return v_t, attn, prefix.mask

    def velocity(self, obs, x_t, time):
        return self.forward(obs, x_t, time)[0]

    def compute_loss(self, rng, obs, actions):
        """Per-example, per-step flow-matching loss [B, H] with openpi's noise/time sampling."""
        ft = flow_targets(rng, actions)
        v_t = self.velocity(obs, ft.x_t, ft.time)
        return jnp.mean(jnp.square(v_t - ft.u_t), axis=-1)

    # -- inference ---------------------------------------------------------------------------
    def sample_actions(self, rng, obs, num_steps: int = 10, noise=None, return_trajectory: bool = False):
        """Euler-integrate the flow from t=1 (noise) to t=0 (actions); the prefix KV cache is built once."""
        c = self.config
        b = validate_observation(c, obs)
        if noise is None:
            noise = jax.random.normal(rng, (b, c.action_horizon, c.action_dim), jnp.float32)
        elif noise.shape != (b, c.action_horizon, c.action_dim):
            raise ValueError(f"noise: expected shape {(b, c.action_horizon, c.action_dim)}, got {noise.shape}")
        dt = -1.0 / num_steps
        prefix = self.embed_prefix(obs)
        prefix_positions = masks.positions_from_mask(prefix.mask)
        _, kv_cache, _ = self.PaliGemma.llm([prefix.tokens, None], prefix_positions,
                                            masks.make_attn_mask(prefix.mask, prefix.ar_mask))
        (x_0, _), (xs, vs, times) = nn.scan(
            denoise_step, variable_broadcast="params", split_rngs={"params": False},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast), length=num_steps,
        )(self, (noise.astype(jnp.float32), jnp.float32(1.0)), obs, kv_cache, prefix.mask, dt)
        if return_trajectory:
            return x_0, {"x": jnp.concatenate([xs, x_0[None]]), "v": vs, "time": times}
        return x_0


def denoise_step(model: Pi0, carry, obs, kv_cache, prefix_mask, dt):
    """One Euler step: only the action expert runs, attending to the cached prefix keys/values."""
    c = model.config
    x_t, time = carry
    b = x_t.shape[0]
    suffix, suffix_mask, suffix_ar, cond = model.embed_suffix(obs, x_t, jnp.broadcast_to(time, (b,)))
    s = suffix.shape[1]
    full_mask = jnp.concatenate([
        jnp.broadcast_to(prefix_mask[:, None, :], (b, s, prefix_mask.shape[1])),
        masks.make_attn_mask(suffix_mask, suffix_ar)], axis=-1)
    positions = jnp.sum(prefix_mask, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
    (_, out), _, _ = model.PaliGemma.llm([None, suffix], positions, full_mask,
                                         adarms_cond=[None, cond], kv_cache=kv_cache)
    v_t = model.action_out_proj(out[:, -c.action_horizon:].astype(jnp.float32))
    # Time is accumulated in float32 step by step, as openpi's loop does.
    return (x_t + dt * v_t, time + dt), (x_t, v_t, time)


class CameraSkippingPi0(Pi0):
    """Pi0 whose vision tower runs only for `active_cameras` (None = all); same params tree.

    Skipped cameras get zero image tokens, which is exact when their mask is false for the whole
    batch: masked prefix tokens are never attended by valid tokens and do not shift positions."""

    active_cameras: Optional[tuple[str, ...]] = None

    def embed_images(self, obs) -> jax.Array:
        if self.active_cameras is None:
            return super().embed_images(obs)
        c = self.config
        parts = []
        for cam in c.image_keys:
            if cam in self.active_cameras:
                parts.append(self.PaliGemma.img(obs["images"][cam]))
            else:
                b = obs["images"][cam].shape[0]
                parts.append(jnp.zeros((b, c.tokens_per_image, c.llm.width), jnp.dtype(c.dtype)))
        return jnp.concatenate(parts, axis=1)


class CompactPi0(Pi0):
    """Pi0 whose prefix holds only `plan`'s cameras and first `plan.prompt_len` prompt tokens; same
    params tree. Cameras left out skip the vision tower and leave no tokens.

    Exact (same actions as Pi0, up to float summation order) when every camera left out is masked
    for the whole batch and every prompt slot from `plan.prompt_len` on is padding in every example;
    `compacted(cfg, obs)` builds such a plan from the batch. Per-example masks stay masks."""

    plan: Optional[PrefixPlan] = None

    def prefix_layout(self) -> PrefixPlan:
        if self.plan is None:
            return full_plan(self.config)
        self.plan.check(self.config)
        return self.plan


def compacted(cfg: ModelConfig, obs: Mapping, buckets=PROMPT_BUCKETS) -> CompactPi0:
    """The compacted model for this batch (reads its masks on the host: they decide the shapes).

        actions = compacted(cfg, obs).apply({"params": p}, rng, obs, method=Pi0.sample_actions)
    """
    return CompactPi0(cfg, plan=prefix_plan(cfg, obs["image_masks"], obs["tokenized_prompt_mask"], buckets))
