"""One fused, pure train step: frozen teacher forward + student forward/backward + AdamW update.

    step_fn = make_train_step(student, teacher, tx, schedule, StepConfig(...))
    step = jit_train_step(step_fn, mesh, state_shardings, teacher_shardings)
    state, metrics = step(state, batch, rng, teacher_params)

Teacher and student see the same observation, noise ε and time t (drawn from `rng` folded with the
step). Without a teacher (`teacher=None`) the same step is plain flow-matching training.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from shallow_pi_jax.models.pi0 import Pi0, flow_targets
from shallow_pi_jax.training import losses
from shallow_pi_jax.training.sharding import batch_sharding, replicated


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any = None


@dataclasses.dataclass(frozen=True)
class StepConfig:
    task_weight: float = 1.0
    velocity_kd_weight: float = 0.0
    attention_kd_weight: float = 0.0
    # (student layer, teacher layer) pairs whose attention is distilled.
    attn_pairs: tuple[tuple[int, int], ...] = ()
    # "action": action-token queries over valid prefix keys (the paper's recipe); "all": every valid
    # query over every valid key (the ablation that collapses).
    attn_queries: str = "action"
    # Vision tower frozen and identical in teacher and student: compute image tokens once.
    share_image_tokens: bool = False
    ema_decay: Optional[float] = None


def make_optimizer(peak_lr: float, warmup_steps: int, decay_steps: int, end_lr: float, *, b1: float, b2: float,
                   eps: float, weight_decay: float, clip_norm: float,
                   freeze: Optional[Callable[[str], bool]] = None):
    """openpi's AdamW: linear warmup from peak/(warmup+1), cosine to `end_lr`, global-norm clipping.

    No defaults here: openpi's values (b1 0.9, b2 0.95, eps 1e-8, weight decay 1e-10, clip 1.0) are the
    experiment config's (training/recipes.py), so they are written once.

    `freeze(path) -> bool` marks params that get no update and keep no optimizer state.
    Returns (optax transformation, learning-rate schedule).
    """
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=peak_lr / (warmup_steps + 1), peak_value=peak_lr, warmup_steps=warmup_steps,
        decay_steps=max(decay_steps, warmup_steps + 1), end_value=end_lr)
    tx = optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    if freeze is not None:
        def labels(params):
            flat = flax.traverse_util.flatten_dict(params, sep="/")
            return flax.traverse_util.unflatten_dict(
                {k: "frozen" if freeze(k) else "train" for k in flat}, sep="/")
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule


def init_state(params, tx, ema: bool = False) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema_params=jax.tree.map(jnp.copy, params) if ema else None)


def _split_batch(batch):
    obs = {k: v for k, v in batch.items() if k != "actions"}
    return obs, batch["actions"]


def make_train_step(student: Pi0, teacher: Optional[Pi0], tx, schedule, cfg: StepConfig):
    s_layers = tuple(s for s, _ in cfg.attn_pairs)
    t_layers = tuple(t for _, t in cfg.attn_pairs)
    use_attn = cfg.attention_kd_weight > 0 and bool(cfg.attn_pairs)
    if teacher is None and (cfg.velocity_kd_weight or use_attn):
        raise ValueError("velocity/attention KD weights are set but no teacher is given")

    def step_fn(state: TrainState, batch, rng, teacher_params):
        obs, actions = _split_batch(batch)
        ft = flow_targets(jax.random.fold_in(rng, state.step), actions)

        image_tokens = None
        if cfg.share_image_tokens:
            image_tokens = jax.lax.stop_gradient(
                student.apply({"params": state.params}, obs, method=Pi0.embed_images))

        def run(model, params, layers):
            """(v, attention at `layers`, prefix mask); the prefix reuses shared image tokens if any."""
            prefix = None
            if image_tokens is not None:
                prefix = model.apply({"params": params}, obs, image_tokens, method=Pi0.embed_prefix)
            return model.apply({"params": params}, obs, ft.x_t, ft.time, attn_layers=layers if use_attn else (),
                               attn_queries=cfg.attn_queries, prefix=prefix, method=Pi0.forward)

        v_teacher = attn_teacher = None
        if teacher is not None:
            v_teacher, attn_teacher, _ = jax.lax.stop_gradient(run(teacher, teacher_params, t_layers))
            v_teacher = v_teacher.astype(jnp.float32)

        def loss_fn(params):
            v, attn, prefix_mask = run(student, params, s_layers)
            terms = {"task": losses.flow_matching_loss(v, ft.u_t)}
            if teacher is not None:
                terms["velocity_kd"] = losses.velocity_kd_loss(v, v_teacher)
            if use_attn:
                n_prefix = prefix_mask.shape[1]
                if cfg.attn_queries == "action":
                    key_mask, query_mask = prefix_mask, None
                    a_t, a_s = attn_teacher[..., :n_prefix], attn[..., :n_prefix]
                else:  # every token: keys and queries are the whole (prefix + suffix) sequence
                    full = jnp.concatenate([prefix_mask, jnp.ones((prefix_mask.shape[0], attn.shape[-1] - n_prefix),
                                                                  bool)], axis=1)
                    key_mask = query_mask = full
                    a_t, a_s = attn_teacher, attn
                terms["attention_kd"] = losses.attention_kd_loss(a_t, a_s, key_mask, query_mask)
            total = cfg.task_weight * terms["task"]
            total += cfg.velocity_kd_weight * terms.get("velocity_kd", 0.0)
            total += cfg.attention_kd_weight * terms.get("attention_kd", 0.0)
            return total, terms

        (total, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if cfg.ema_decay is not None and ema is not None:
            ema = jax.tree.map(lambda e, p: cfg.ema_decay * e + (1 - cfg.ema_decay) * p, ema, params)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        metrics = {"loss": total, **{f"loss/{k}": v for k, v in terms.items()},
                   "grad_norm": optax.tree.norm(grads), "param_norm": optax.tree.norm(params),
                   "learning_rate": schedule(state.step)}
        return new_state, metrics

    return step_fn


def jit_train_step(step_fn, mesh, state_shardings, teacher_shardings):
    """jit once with explicit shardings; the state is donated so params/opt state update in place."""
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh), teacher_shardings),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=(0,))

