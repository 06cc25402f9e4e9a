"""A reader's episodes → training frames, the same for every format (rlds.py, lerobot.py).

Input per episode: {"id", "index", "images": {cam: [T] encoded or [T, H, W, 3] uint8}, "prompt": [T],
"state": [T, S], "actions": [T, A]}. Per frame: the action chunk of the next `horizon` steps
(clamped at the episode end), minus the masked state dims when delta actions are on, DROID's idle
frames dropped, state and chunk normalised and padded to data.action_dim. Images stay as they
came; pipeline.py decodes them after the shuffle buffer.
"""
from __future__ import annotations

import tensorflow as tf

from shallow_pi_jax.data import norm_stats as _ns
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.data.field_plan import FieldPlan
from shallow_pi_jax.data.mappings import Mapping


def action_chunks(state, actions, horizon: int, mask, mapping: Mapping):
    """[T, A] → chunks [T, H, A] of the next `horizon` actions (clamped at the last step), minus the
    masked state dims when delta actions are on; plus openpi's DROID "is moving" flag per frame."""
    steps = tf.shape(actions)[0]
    idx = tf.minimum(tf.range(steps)[:, None] + tf.range(horizon)[None, :], steps - 1)
    chunks = tf.gather(actions, idx)
    moving = None
    if mapping.idle_threshold is not None:
        # openpi looks at the first half of the chunk; position mode needs two steps to see motion.
        n = min(max(horizon // 2, 2 if mapping.idle_mode == "position" else 1), horizon)
        half = chunks[:, :n]
        moved = half - half[:, :1] if mapping.idle_mode == "position" else half
        moving = tf.reduce_any(tf.abs(moved) > mapping.idle_threshold, axis=[1, 2])
        if n < 2 and mapping.idle_mode == "position":
            moving = tf.ones_like(moving)  # a 1-step chunk cannot show motion: keep every frame
    if mask is not None:
        d = len(mask)
        offset = tf.where(tf.constant(mask), state[:, :d], 0.0)
        offset = tf.pad(offset, [[0, 0], [0, tf.shape(chunks)[-1] - d]])
        chunks = chunks - offset[:, None, :]
    return chunks, moving


def chunk_and_normalize(spec: DatasetSpec, cfg: DataConfig, plan: FieldPlan, episodes: tf.data.Dataset,
                        stats: dict[str, _ns.NormStats] | None) -> tf.data.Dataset:
    """Episodes → frames: action chunks (clamped), delta actions, normalisation, padding to model dims."""
    horizon = cfg.horizon
    mapping = spec.mapping
    mask = cfg.delta_mask_for(spec)
    source = cfg.norm_stats_for(spec)
    state_stats = action_stats = None
    if stats is not None:
        state_stats = _ns.require(stats, "state", cfg.quantile_norm, source)
        action_stats = _ns.require(stats, "actions", cfg.quantile_norm, source)
        for what, s, dim in (("state", state_stats, plan.state_dim), ("actions", action_stats, plan.action_dim)):
            if dim is not None and dim > s.dim:
                raise ValueError(f"dataset {spec.name!r}: norm stats {source!r} have {s.dim} dims for '{what}' "
                                 f"but the data has {dim}; recompute them with shallow_pi_jax.compute_norm_stats")

    def norm(x, s):
        if s is None:
            return x
        dim = tf.shape(x)[-1]
        x64 = tf.cast(x, tf.float64)
        if cfg.quantile_norm:
            q01, q99 = tf.constant(s.q01)[:dim], tf.constant(s.q99)[:dim]
            y = (x64 - q01) / (q99 - q01 + _ns.EPS) * 2.0 - 1.0
        else:
            mean, std = tf.constant(s.mean)[:dim], tf.constant(s.std)[:dim]
            y = (x64 - mean) / (std + _ns.EPS)
        return tf.cast(y, tf.float32)

    def pad(x):
        extra = cfg.action_dim - tf.shape(x)[-1]
        paddings = tf.concat([tf.zeros([tf.rank(x) - 1, 2], tf.int32), [[0, extra]]], axis=0)
        return tf.pad(x, paddings)

    def frames(ep):
        state = ep["state"]
        steps = tf.shape(state)[0]
        chunks, moving = action_chunks(state, ep["actions"], horizon, mask, mapping)
        out = {"images": ep["images"], "prompt": ep["prompt"]}
        if moving is not None:
            out["moving"] = moving
        out["state"] = pad(norm(state, state_stats))
        out["actions"] = pad(norm(chunks, action_stats))
        out["state"] = tf.ensure_shape(out["state"], [None, cfg.action_dim])
        out["actions"] = tf.ensure_shape(out["actions"], [None, horizon, cfg.action_dim])
        out["state_dim"] = tf.fill([steps], tf.shape(state)[-1])
        return tf.data.Dataset.from_tensor_slices(out)

    ds = episodes.flat_map(frames)
    if mapping.idle_threshold is not None:
        ds = ds.filter(lambda f: f["moving"])
        ds = ds.map(lambda f: {k: v for k, v in f.items() if k != "moving"})
    return ds


def unnormalized_chunks(spec: DatasetSpec, cfg: DataConfig, episodes: tf.data.Dataset) -> tf.data.Dataset:
    """Per episode {"state": [T, S], "actions": [T, H, A]} after delta actions and DROID's idle filter,
    before normalisation: what norm stats are computed on."""
    horizon, mask = cfg.horizon, cfg.delta_mask_for(spec)

    def chunk(ep):
        state = ep["state"]
        chunks, moving = action_chunks(state, ep["actions"], horizon, mask, spec.mapping)
        if moving is not None:  # stats over the frames training sees
            state, chunks = tf.boolean_mask(state, moving), tf.boolean_mask(chunks, moving)
        return {"state": state, "actions": chunks}

    return episodes.map(chunk, num_parallel_calls=cfg.num_parallel_calls)
