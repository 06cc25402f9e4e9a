"""From a run's plan (training.plan) to the pieces of a run: params, optimizer, the sharded step.

Kept apart from the training loop so the AOT compile tool and the benchmarks build exactly the
trainer's step (same models, shardings, optimizer) without data or checkpoints.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from shallow_pi_jax.checkpoint import openpi_params
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.observation import dummy_observation
from shallow_pi_jax.models.params import init_params, param_shapes
from shallow_pi_jax.models.pi0 import Pi0
from shallow_pi_jax.training import sharding
from shallow_pi_jax.training import step as ts
from shallow_pi_jax.training.plan import RunPlan
from shallow_pi_jax.training.student_init import student_params

VISION_PREFIX = "PaliGemma/img/"


def optimizer(plan: RunPlan):
    o = plan.optim
    freeze = (lambda path: path.startswith(VISION_PREFIX)) if plan.freeze_vision else None
    return ts.make_optimizer(o.peak_lr, o.warmup_steps, o.decay_steps, o.end_lr, b1=o.b1, b2=o.b2, eps=o.eps,
                             weight_decay=o.weight_decay, clip_norm=o.clip_norm, freeze=freeze)


def load_teacher(plan: RunPlan, mesh) -> Any:
    """Teacher params in float32, FSDP-sharded, read shard by shard from the openpi checkpoint."""
    shapes = param_shapes(plan.teacher)
    openpi_params.validate_params(openpi_params.params_shapes(plan.teacher_params), shapes)
    shardings = sharding.fsdp_shardings(shapes, mesh)
    return openpi_params.restore_params(plan.teacher_params, dtype=jnp.float32, sharding=shardings)


def initial_student(plan: RunPlan, teacher_params, rng) -> Any:
    if plan.init == "teacher":
        if teacher_params is None:
            raise ValueError("student.init='teacher' needs teacher.params")
        return student_params(teacher_params, plan.layer_map, expected=param_shapes(plan.student))
    if plan.init != "scratch":
        raise ValueError(f"student.init: expected 'teacher' or 'scratch', got {plan.init!r}")
    return init_params(plan.student, rng)


def state_shardings(state_shapes, mesh):
    return sharding.fsdp_shardings(state_shapes, mesh)


def make_step(plan: RunPlan, mesh, tx, schedule, state_shapes, teacher_shapes):
    """The jitted, sharded train step and the shardings it expects."""
    teacher = Pi0(plan.teacher) if plan.teacher else None
    fn = ts.make_train_step(Pi0(plan.student), teacher, tx, schedule, plan.step)
    st_sh = state_shardings(state_shapes, mesh)
    t_sh = sharding.fsdp_shardings(teacher_shapes, mesh) if teacher_shapes is not None else None
    return ts.jit_train_step(fn, mesh, st_sh, t_sh), st_sh, t_sh


def abstract_batch(cfg: ModelConfig, batch_size: int):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        dummy_observation(cfg, batch_size, with_actions=True))


def teacher_compute_params(params, plan: RunPlan):
    """Cast the frozen teacher to its compute dtype (bfloat16 on accelerators halves its memory)."""
    dt = jnp.dtype(plan.teacher.dtype)
    return jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dt), p), donate_argnums=0)(params)


def abstract_step_inputs(plan: RunPlan, mesh, global_batch: int | None = None):
    """The trainer's jitted step and abstract, sharded arguments for it — no weights, no data.

    For ahead-of-time compilation (`step.lower(*args).compile()`) of the real-size step on any
    machine: memory and cost analysis come from XLA without allocating a single parameter.
    """
    tx, schedule = optimizer(plan)
    ema = plan.optim.ema_decay is not None
    state_shapes = jax.eval_shape(lambda p: ts.init_state(p, tx, ema), param_shapes(plan.student))
    teacher_shapes = None
    if plan.teacher is not None:
        dt = jnp.dtype(plan.teacher.dtype)
        teacher_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dt), param_shapes(plan.teacher))
    step, st_sh, t_sh = make_step(plan, mesh, tx, schedule, state_shapes, teacher_shapes)

    def with_sharding(shapes, shardings):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)

    b = global_batch or int(plan.batch_size)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh)),
                         abstract_batch(plan.student, b))
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(mesh))
    teacher = None if teacher_shapes is None else with_sharding(teacher_shapes, t_sh)
    return step, (with_sharding(state_shapes, st_sh), batch, rng, teacher)
