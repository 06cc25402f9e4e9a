"""From an experiment config to the pieces of a run: models, layer map, params, optimizer, step.

Kept apart from the training loop so the AOT compile tool and the benchmarks build exactly the
trainer's step (same models, shardings, optimizer) without data or checkpoints.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from shallow_pi_jax.checkpoint import openpi_params, policy_record
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.observation import dummy_observation
from shallow_pi_jax.models.params import init_params, param_shapes
from shallow_pi_jax.models.pi0 import Pi0
from shallow_pi_jax.training import config as train_config
from shallow_pi_jax.training import layer_map as layer_maps
from shallow_pi_jax.training import sharding
from shallow_pi_jax.training import step as ts
from shallow_pi_jax.training.layer_map import LayerMap
from shallow_pi_jax.training.student_init import student_params

VISION_PREFIX = "PaliGemma/img/"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    teacher_cfg: Optional[ModelConfig]  # None: plain training, no teacher
    student_cfg: ModelConfig
    layer_map: Optional[LayerMap]
    step_cfg: ts.StepConfig


def layer_map_from_config(config, teacher_depth: int) -> LayerMap:
    st = config.student
    return layer_maps.from_config(teacher_depth, int(st.depth), st.layer_map, st.get("expert_map", layer_maps.SAME))


def attn_pairs(config, lmap: LayerMap) -> tuple[tuple[int, int], ...]:
    """(student layer, teacher layer) for the configured attention-KD layer.

    The teacher layer is the one the student's action expert started from: the distilled attention
    rows are the action queries (or all tokens, whose joint attention the expert's queries join)."""
    depth = lmap.student_depth
    where = config.loss.attn_layer
    j = {"initial": 0, "middle": depth // 2, "late": depth - 1}.get(where, where)
    if not isinstance(j, int) or not 0 <= j < depth:
        raise ValueError(f"loss.attn_layer: expected initial|middle|late or a student layer in [0, {depth}), "
                         f"got {where!r}")
    return ((j, lmap.expert[j]),)


def run_spec(config) -> RunSpec:
    model_cfg = ModelConfig.from_dict(config.model)
    model_cfg = dataclasses.replace(model_cfg, remat=bool(config.remat))
    has_teacher = bool(config.teacher.params)
    lmap = layer_map_from_config(config, model_cfg.depth) if has_teacher else None
    depth = lmap.student_depth if lmap else int(config.student.depth)
    student_cfg = model_cfg.with_depth(depth)
    teacher_cfg = dataclasses.replace(model_cfg, dtype=config.teacher.dtype) if has_teacher else None
    use_attn = has_teacher and config.loss.attention_kd > 0
    step_cfg = ts.StepConfig(
        task_weight=float(config.loss.task),
        velocity_kd_weight=float(config.loss.velocity_kd) if has_teacher else 0.0,
        attention_kd_weight=float(config.loss.attention_kd) if use_attn else 0.0,
        attn_pairs=attn_pairs(config, lmap) if use_attn else (),
        attn_queries=config.loss.attn_queries,
        share_image_tokens=bool(config.student.freeze_vision) and has_teacher and config.student.init == "teacher",
        ema_decay=config.optim.ema_decay)
    return RunSpec(teacher_cfg, student_cfg, lmap, step_cfg)


def student_record(config) -> policy_record.PolicyRecord:
    """The record the trained model is written with: its teacher's (checked against config.data), or for
    plain training config.data's. Pass it to policy_dir.write so serving sees what training fed."""
    record = train_config.teacher_record(config)
    source = f"teacher {config.teacher.params} ({record.source})" if config.teacher.params else record.source
    return dataclasses.replace(record, source=source)


def optimizer(config):
    o = config.optim
    freeze = (lambda path: path.startswith(VISION_PREFIX)) if config.student.freeze_vision else None
    return ts.make_optimizer(o.peak_lr, o.warmup_steps, o.decay_steps, o.end_lr, b1=o.b1, b2=o.b2, eps=o.eps,
                             weight_decay=o.weight_decay, clip_norm=o.clip_norm, freeze=freeze)


def load_teacher(config, spec: RunSpec, mesh) -> Any:
    """Teacher params in float32, FSDP-sharded, read shard by shard from the openpi checkpoint."""
    shapes = param_shapes(spec.teacher_cfg)
    openpi_params.validate_params(openpi_params.params_shapes(config.teacher.params), shapes)
    shardings = sharding.fsdp_shardings(shapes, mesh)
    return openpi_params.restore_params(config.teacher.params, dtype=jnp.float32, sharding=shardings)


def initial_student(config, spec: RunSpec, teacher_params, rng) -> Any:
    if config.student.init == "teacher":
        if teacher_params is None:
            raise ValueError("student.init='teacher' needs teacher.params")
        return student_params(teacher_params, spec.layer_map, expected=param_shapes(spec.student_cfg))
    if config.student.init != "scratch":
        raise ValueError(f"student.init: expected 'teacher' or 'scratch', got {config.student.init!r}")
    return init_params(spec.student_cfg, rng)


def state_shardings(state_shapes, mesh):
    return sharding.fsdp_shardings(state_shapes, mesh)


def make_step(config, spec: RunSpec, mesh, tx, schedule, state_shapes, teacher_shapes):
    """The jitted, sharded train step and the shardings it expects."""
    teacher = Pi0(spec.teacher_cfg) if spec.teacher_cfg else None
    fn = ts.make_train_step(Pi0(spec.student_cfg), teacher, tx, schedule, spec.step_cfg)
    st_sh = state_shardings(state_shapes, mesh)
    t_sh = sharding.fsdp_shardings(teacher_shapes, mesh) if teacher_shapes is not None else None
    return ts.jit_train_step(fn, mesh, st_sh, t_sh), st_sh, t_sh


def abstract_batch(cfg: ModelConfig, batch_size: int):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        dummy_observation(cfg, batch_size, with_actions=True))


def teacher_compute_params(params, spec: RunSpec):
    """Cast the frozen teacher to its compute dtype (bfloat16 on accelerators halves its memory)."""
    dt = jnp.dtype(spec.teacher_cfg.dtype)
    return jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dt), p), donate_argnums=0)(params)


def abstract_step_inputs(config, mesh, global_batch: int | None = None):
    """The trainer's jitted step and abstract, sharded arguments for it — no weights, no data.

    For ahead-of-time compilation (`step.lower(*args).compile()`) of the real-size step on any
    machine: memory and cost analysis come from XLA without allocating a single parameter.
    """
    spec = run_spec(config)
    tx, schedule = optimizer(config)
    ema = config.optim.ema_decay is not None
    state_shapes = jax.eval_shape(lambda p: ts.init_state(p, tx, ema), param_shapes(spec.student_cfg))
    teacher_shapes = None
    if spec.teacher_cfg is not None:
        dt = jnp.dtype(spec.teacher_cfg.dtype)
        teacher_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dt), param_shapes(spec.teacher_cfg))
    step, st_sh, t_sh = make_step(config, spec, mesh, tx, schedule, state_shapes, teacher_shapes)

    def with_sharding(shapes, shardings):
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)

    b = global_batch or int(config.batch_size)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh)),
                         abstract_batch(spec.student_cfg, b))
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(mesh))
    teacher = None if teacher_shapes is None else with_sharding(teacher_shapes, t_sh)
    return step, (with_sharding(state_shapes, st_sh), batch, rng, teacher)
