"""The checks of an experiment config, in one pass (training.plan.resolve runs it once per run)."""
from __future__ import annotations

import math
import os

import ml_collections

from shallow_pi_jax.checkpoint import policy_record
from shallow_pi_jax.data.config import DataConfig
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.training import layer_map as layer_maps
from shallow_pi_jax.training.recipes import DEFAULTS, DEMO, VALUES, base_config


def check(config: ml_collections.ConfigDict) -> tuple[ModelConfig, DataConfig]:
    """Refuse a config that cannot train, before anything runs or is written: a ValueError
    `config.<key>: expected ..., got ...`. Returns the model and data configs it read.

    Accepts the `demo` placeholders (before demo.prepare) and real paths (after); local paths must
    exist, remote ones (gs://...) are left to the reader. The teacher's policy record is checked
    where it is resolved (training.records)."""
    _check_keys(config, base_config({**DEFAULTS, "depth": None}), "config")
    for key in ("num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        _check(config, key, _is_int(config[key]) and config[key] >= 1, "an int >= 1")
    _check(config, "seed", _is_int(config.seed), "an int")
    for key in ("remat", "async_checkpoint", "student.freeze_vision", "wandb.enabled"):
        _check(config, key, isinstance(_get(config, key), bool), "True or False")
    _check(config, "distributed", config.distributed in ("auto", "on", "off"), "auto, on or off")
    _check_optim(config)
    _check(config, "mesh.data", _is_int(config.mesh.data) and config.mesh.data >= 1, "an int >= 1")
    _check(config, "mesh.fsdp", _is_int(config.mesh.fsdp) and (config.mesh.fsdp >= 1 or config.mesh.fsdp == -1),
           "an int >= 1, or -1 (every device)")
    if config.mesh.fsdp != -1:  # with -1 the device count decides; training.sharding checks it then
        n = config.mesh.data * config.mesh.fsdp
        _check(config, "batch_size", config.batch_size % n == 0,
               f"a multiple of mesh.data × mesh.fsdp = {n} (the batch is split over both axes)")
    try:
        model = ModelConfig.from_dict(config.model.to_dict())
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"config.model: {e}") from None
    _check_student_and_loss(config, model.depth)
    data = _check_data(config)
    if config.teacher.params:
        _check(config, "teacher.preset", config.teacher.preset in ("", "data", *policy_record.OPENPI),
               f"'', 'data' or an openpi config name ({', '.join(policy_record.OPENPI)})")
    return model, data


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _get(config, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def _check(config, key: str, ok: bool, expected: str, got=None) -> None:
    if not ok:
        got = _get(config, key) if got is None else got
        raise ValueError(f"config.{key}: expected {expected}, got {got!r}")


def _check_keys(node, reference, where: str) -> None:
    """Every key of the reference config is there and no other (a typo would otherwise be ignored)."""
    keys, known = set(node.keys()), set(reference.keys())
    for key in sorted(keys - known):
        raise ValueError(f"{where}.{key}: unknown key; expected one of {', '.join(sorted(known))}")
    for key in sorted(known - keys):
        raise ValueError(f"{where}.{key}: missing (a config built by shallow_pi_jax.training.recipes has it)")
    for key in sorted(known):
        if isinstance(reference[key], ml_collections.ConfigDict):
            if not isinstance(node[key], ml_collections.ConfigDict):
                raise ValueError(f"{where}.{key}: expected a group of keys ({', '.join(reference[key].keys())}), "
                                 f"got {node[key]!r}")
            _check_keys(node[key], reference[key], f"{where}.{key}")


def _check_optim(config) -> None:
    o = config.optim
    _check(config, "optim.peak_lr", _is_number(o.peak_lr) and o.peak_lr > 0, "a learning rate > 0")
    _check(config, "optim.end_lr", _is_number(o.end_lr) and o.end_lr >= 0, "a learning rate >= 0")
    _check(config, "optim.warmup_steps", _is_int(o.warmup_steps) and o.warmup_steps >= 0, "an int >= 0")
    _check(config, "optim.decay_steps", _is_int(o.decay_steps) and o.decay_steps >= 1, "an int >= 1")
    for key in ("b1", "b2"):
        _check(config, f"optim.{key}", _is_number(o[key]) and 0 <= o[key] < 1, "a number in [0, 1)")
    _check(config, "optim.eps", _is_number(o.eps) and o.eps > 0, "a number > 0")
    _check(config, "optim.weight_decay", _is_number(o.weight_decay) and o.weight_decay >= 0, "a number >= 0")
    _check(config, "optim.clip_norm", _is_number(o.clip_norm) and o.clip_norm > 0, "a number > 0")
    _check(config, "optim.ema_decay", o.ema_decay is None or (_is_number(o.ema_decay) and 0 <= o.ema_decay < 1),
           "None or a number in [0, 1)")


def _check_student_and_loss(config, teacher_depth: int) -> None:
    st, loss = config.student, config.loss
    has_teacher = bool(config.teacher.params)
    _check(config, "teacher.params", isinstance(config.teacher.params, str), "a params directory, 'demo' or ''")
    _check(config, "teacher.dtype", config.teacher.dtype in ("float32", "bfloat16", "float16"),
           "float32, bfloat16 or float16")
    _check(config, "student.depth", _is_int(st.depth) and 1 <= st.depth <= teacher_depth,
           f"an int in [1, {teacher_depth}] (the teacher's depth, model.llm.depth)")
    _check(config, "student.init", st.init in VALUES["init"], " or ".join(VALUES["init"]))
    _check(config, "teacher.params", st.init != "teacher" or has_teacher,
           "a teacher params directory (or 'demo'): student.init='teacher' copies the student from it")
    for key in ("layer_map", "expert_map"):
        text = str(st[key])
        if text in VALUES[key]:
            continue
        try:
            indices = layer_maps.parse_layers(text)
            layer_maps.LayerMap(teacher_depth, indices)
        except ValueError as e:
            raise ValueError(f"config.student.{key}: expected {', '.join(VALUES[key])} or teacher layer "
                             f"indices such as '0,3,7', got {text!r} ({e})") from None
        _check(config, f"student.{key}", len(indices) == st.depth,
               f"{st.depth} teacher layer indices (one per student layer, student.depth={st.depth})")
    for key in ("task", "velocity_kd", "attention_kd"):
        _check(config, f"loss.{key}", _is_number(loss[key]) and loss[key] >= 0, "a weight >= 0")
        if key != "task" and not has_teacher:
            _check(config, f"loss.{key}", loss[key] == 0, "0: there is no teacher (teacher.params is '')")
    _check(config, "loss", loss.task + loss.velocity_kd + loss.attention_kd > 0,
           "at least one of task, velocity_kd, attention_kd > 0", got=loss.to_dict())
    _check(config, "loss.attn_layer", loss.attn_layer in VALUES["attn_layer"], " or ".join(VALUES["attn_layer"]))
    _check(config, "loss.attn_queries", loss.attn_queries in VALUES["attn_queries"],
           " or ".join(VALUES["attn_queries"]))


def local(path) -> bool:
    """A path this process can check: not empty, not the demo placeholder, not a URL (gs://, s3://)."""
    return isinstance(path, str) and path not in ("", DEMO) and "://" not in path


def _check_data(config) -> DataConfig:
    data, model = config.data, config.model
    for key, want in (("pi05", bool(model.pi05)), ("horizon", model.action_horizon),
                      ("action_dim", model.action_dim), ("image_size", model.image_size[0]),
                      ("max_token_len", model.max_token_len), ("cameras", tuple(model.image_keys))):
        source = {"pi05": "pi05", "horizon": "action_horizon", "image_size": "image_size[0]",
                  "cameras": "image_keys"}.get(key, key)
        _check(config, f"data.{key}", data[key] == want, f"model.{source} = {want!r} (what the model consumes)")
    try:
        data_config = DataConfig.from_any(data)
    except ValueError as e:
        message = str(e)
        raise ValueError(f"config.{message}" if message.startswith("data.") else f"config.data.{message}") from None
    for i, spec in enumerate(data_config.datasets):
        if local(spec.data_dir) and not os.path.isdir(spec.data_dir):
            raise ValueError(f"config.data.datasets[{i}].data_dir: expected an existing directory holding "
                             f"{spec.name}/<version>/, got {spec.data_dir!r} (not found)")
        norm_stats = data_config.norm_stats_for(spec)
        if not norm_stats:
            raise ValueError(f"config.data.norm_stats_path: expected a norm_stats.json (or its folder) for dataset "
                             f"{spec.name!r}, got {norm_stats!r}; compute one with "
                             "`python -m shallow_pi_jax.compute_norm_stats`")
        key = f"data.datasets[{i}].norm_stats" if spec.norm_stats else "data.norm_stats_path"
        if local(norm_stats) and not os.path.exists(norm_stats):
            raise ValueError(f"config.{key}: expected a norm_stats.json or its folder, got {norm_stats!r} (not found)")
    tokenizer = data.tokenizer_path
    _check(config, "data.tokenizer_path", bool(tokenizer), "the PaliGemma sentencepiece model file")
    _check(config, "data.tokenizer_path", not local(tokenizer) or os.path.isfile(tokenizer),
           "the PaliGemma sentencepiece model file", got=f"{tokenizer} (not found)")
    params = config.teacher.params
    _check(config, "teacher.params", not local(params) or os.path.exists(params),
           "an openpi params directory", got=f"{params} (not found)")
    return data_config
