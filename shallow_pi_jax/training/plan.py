"""A run, resolved once: `resolve(config)` checks an experiment config and turns it into a frozen RunPlan.

Everything after resolution (the trainer, the demo's preparation, the AOT compile, the benchmarks, the
ablation) reads the plan's typed fields: the teacher and student ModelConfig, the LayerMap, the loss
StepConfig, the optimizer, the DataConfig the model consumes and the student's PolicyRecord. The
config itself survives only as the JSON written to the run's config.json (for resume diffing).

    plan = resolve(recipes.load("experiments/l6.py:size=demo"))
    plan.student.depth, plan.layer_map.indices, plan.step.attn_pairs, plan.data.horizon
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import ml_collections

from shallow_pi_jax.checkpoint import policy_record
from shallow_pi_jax.data.config import DataConfig
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.training import layer_map as layer_maps
from shallow_pi_jax.training import records, validate
from shallow_pi_jax.training import step as ts
from shallow_pi_jax.training.layer_map import LayerMap


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """openpi's AdamW and schedule (step.make_optimizer), and the EMA of the params."""
    peak_lr: float
    warmup_steps: int
    decay_steps: int
    end_lr: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    clip_norm: float
    ema_decay: Optional[float]


@dataclasses.dataclass(frozen=True)
class Wandb:
    enabled: bool
    project: str
    name: str


@dataclasses.dataclass(frozen=True)
class RunPlan:
    config_json: str                    # the config as config.json holds it: what a resume is compared with
    model: ModelConfig                  # config.model as given: the teacher's architecture
    teacher: Optional[ModelConfig]      # None: plain training, no teacher
    student: ModelConfig
    layer_map: Optional[LayerMap]       # teacher layer → student layer; None without a teacher
    step: ts.StepConfig                 # the loss terms
    optim: Optimizer
    data: DataConfig                    # what the model consumes (its horizon, dims, cameras, prompt)
    record: Optional[policy_record.PolicyRecord]  # the student's; None for a plan that is not run (derive)
    teacher_params: str                 # the teacher's params directory; "" without one
    teacher_preset: str                 # config.teacher.preset (see records.teacher_record)
    init: str                           # "teacher" | "scratch"
    freeze_vision: bool
    seed: int
    num_steps: int
    batch_size: int                     # global
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    async_checkpoint: bool
    mesh_data: int
    mesh_fsdp: int                      # -1: every device
    distributed: str                    # auto | on | off
    wandb: Wandb


def resolve(config: ml_collections.ConfigDict) -> RunPlan:
    """Check `config` (training.validate: a ValueError naming the key) and resolve the run it describes,
    the teacher's policy record included. The `demo` placeholders pass (demo.prepare replaces them)."""
    model, data = validate.check(config)
    record = records.student_record(data, config.teacher.params, config.teacher.preset)
    return _plan(config, model, data, record)


def derive(config: ml_collections.ConfigDict) -> RunPlan:
    """The plan of a config that is compiled or benchmarked but not run: no checks, no teacher read (its
    params may be a placeholder), no record. AOT compilation varies depths on the config, then derives."""
    return _plan(config, ModelConfig.from_dict(config.model), DataConfig.from_any(config.data), None)


def _plan(config, model: ModelConfig, data: DataConfig, record) -> RunPlan:
    model_cfg = dataclasses.replace(model, remat=bool(config.remat))
    has_teacher = bool(config.teacher.params)
    st = config.student
    lmap = layer_maps.from_config(model_cfg.depth, int(st.depth), st.layer_map,
                                  st.get("expert_map", layer_maps.SAME)) if has_teacher else None
    use_attn = has_teacher and config.loss.attention_kd > 0
    step = ts.StepConfig(
        task_weight=float(config.loss.task),
        velocity_kd_weight=float(config.loss.velocity_kd) if has_teacher else 0.0,
        attention_kd_weight=float(config.loss.attention_kd) if use_attn else 0.0,
        attn_pairs=attn_pairs(config.loss.attn_layer, lmap) if use_attn else (),
        attn_queries=config.loss.attn_queries,
        share_image_tokens=bool(st.freeze_vision) and has_teacher and st.init == "teacher",
        ema_decay=config.optim.ema_decay)
    o = config.optim
    return RunPlan(
        # The trainer has always written the config as a copy made by to_dict (its keys sorted).
        config_json=ml_collections.ConfigDict(config.to_dict()).to_json_best_effort(indent=1) + "\n",
        model=model,
        teacher=dataclasses.replace(model_cfg, dtype=config.teacher.dtype) if has_teacher else None,
        student=model_cfg.with_depth(lmap.student_depth if lmap else int(st.depth)),
        layer_map=lmap, step=step,
        optim=Optimizer(o.peak_lr, o.warmup_steps, o.decay_steps, o.end_lr, b1=o.b1, b2=o.b2, eps=o.eps,
                        weight_decay=o.weight_decay, clip_norm=o.clip_norm, ema_decay=o.ema_decay),
        data=data, record=record, teacher_params=config.teacher.params, teacher_preset=config.teacher.preset,
        init=st.init, freeze_vision=bool(st.freeze_vision), seed=config.seed, num_steps=config.num_steps,
        batch_size=config.batch_size, log_every=config.log_every, checkpoint_every=config.checkpoint_every,
        keep_checkpoints=config.keep_checkpoints, async_checkpoint=config.async_checkpoint,
        mesh_data=config.mesh.data, mesh_fsdp=config.mesh.fsdp, distributed=config.distributed,
        wandb=Wandb(config.wandb.enabled, config.wandb.project, config.wandb.name))


def attn_pairs(where: str, lmap: LayerMap) -> tuple[tuple[int, int], ...]:
    """(student layer, teacher layer) for the attention-KD layer `where` (config.loss.attn_layer).

    The teacher layer is the one the student's action expert started from: the distilled attention
    rows are the action queries (or all tokens, whose joint attention the expert's queries join)."""
    depth = lmap.student_depth
    j = {"initial": 0, "middle": depth // 2, "late": depth - 1}.get(where, where)
    if not isinstance(j, int) or not 0 <= j < depth:
        raise ValueError(f"loss.attn_layer: expected initial|middle|late or a student layer in [0, {depth}), "
                         f"got {where!r}")
    return ((j, lmap.expert[j]),)
