"""Experiment configs as data. `experiments/*.py` call these builders from `get_config(arg)`; `load`
reads such a file.

`arg` (after the config path) is comma-separated `key=value`, big_vision style:

    --config experiments/l6.py                         # π0.5, 18 → 6 layers, the paper's recipe
    --config experiments/l6.py:size=demo               # embedded demo: tiny model, sim data, ~minutes on CPU
    --config experiments/l6.py:model=pi0,loss=kd       # π0 teacher, task + velocity KD only
    --config experiments/l6.py:depth=4,attn_layer=late

Keys (default first):
    depth         student layers (int; the experiment file's default: l4 4, l6 6, l9 9)
    model         pi05 | pi0
    size          real | demo (tiny model, simulator data, bundled teacher) | tiny (demo shrunk to 32×32 images
                  and a few steps: a smoke test)
    loss          full (task + velocity KD + attention KD) | kd (task + velocity KD) | task_only
    attn_layer    middle | initial | late: the layer whose attention is distilled
    attn_queries  action | all: attention KD over the action-token queries or over every token
    init          teacher | scratch (random init, and so task loss only: the from-scratch baseline)
    layer_map     uniform | first | last: which teacher layers initialise the student (both stacks, or the
                  backbone when expert_map is set)
    expert_map    same | uniform | first | last: the action expert's own map; `layer_map=first,expert_map=uniform`
                  is the published reference code's student (backbone first L, expert uniform)
experiments/teacher.py (plain training, no student) takes only model and size.

Each value also has a bare short form (`demo`, `pi0`, `kd`, `attn_late`, `attn_all`, `scratch`, `first`, ...;
see ALIASES), so `experiments/l6.py:demo,pi0` still works. Setting a key twice to different values is an
error. Anything else can be set with `--config.x=y`.
"""
from __future__ import annotations

import importlib.util
import math
import os
import pathlib

import ml_collections
from absl import flags

from shallow_pi_jax.checkpoint import policy_record
from shallow_pi_jax.data.config import DataConfig
from shallow_pi_jax.data.config import default_config as default_data_config
from shallow_pi_jax.models.config import GemmaConfig, ModelConfig, SiglipConfig
from shallow_pi_jax.training import layer_map as layer_maps

DEFAULTS = dict(model="pi05", size="real", loss="full", attn_layer="middle", attn_queries="action", init="teacher",
                layer_map="uniform", expert_map="same")
VALUES = dict(model=("pi05", "pi0"), size=("real", "demo", "tiny"), loss=("task_only", "kd", "full"),
              attn_layer=("initial", "middle", "late"), attn_queries=("action", "all"), init=("teacher", "scratch"),
              layer_map=("uniform", "first", "last"), expert_map=("same", "uniform", "first", "last"))
# The bare words of the older flag syntax, kept so that short commands like `l6.py:demo,pi0` still work.
ALIASES = {"demo": ("size", "demo"), "tiny": ("size", "tiny"), "pi0": ("model", "pi0"), "pi05": ("model", "pi05"),
           "task_only": ("loss", "task_only"), "kd": ("loss", "kd"), "full": ("loss", "full"),
           "attn_initial": ("attn_layer", "initial"), "attn_middle": ("attn_layer", "middle"),
           "attn_late": ("attn_layer", "late"), "attn_all": ("attn_queries", "all"), "scratch": ("init", "scratch"),
           "first": ("layer_map", "first")}
# The from-scratch baseline is trained on the task alone: distilling into a random init is not an arm we run,
# so asking for it (init=scratch,loss=kd) is an error rather than silently dropping the KD terms.
IMPLIED = {("init", "scratch"): ("loss", "task_only")}

DEMO_CAMERAS = ("base_0_rgb", "left_wrist_0_rgb")
DEMO = "demo"  # the placeholder shallow_pi_jax.demo.resolve replaces with the embedded default's paths


def parse_arg(arg: str | None, **defaults) -> dict:
    """'loss=kd,depth=4' (or the short form 'kd') → `defaults` with those keys replaced.

    The keys of `defaults` are the valid keys; an int default makes its key an int."""
    given = {}  # key → (value, the item of `arg` that set it)

    def put(key, value, item):
        if key not in defaults:
            raise ValueError(f"config arg: unknown key {key!r} (in {item!r}); valid keys: {', '.join(defaults)}")
        if isinstance(defaults[key], int):
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"config arg: {key}={value!r} is not a positive integer")
            value = int(value)
        elif value not in VALUES[key]:
            raise ValueError(f"config arg: {key}={value!r} is not one of {', '.join(VALUES[key])}")
        if key in given and given[key][0] != value:
            raise ValueError(f"config arg: {key} is set to both {given[key][0]!r} (by {given[key][1]!r}) "
                             f"and {value!r} (by {item!r})")
        given[key] = (value, item)

    for item in (s.strip() for s in (arg or "").split(",")):
        if not item:
            continue
        if "=" in item:
            key, value = (s.strip() for s in item.split("=", 1))
        elif item in ALIASES:
            key, value = ALIASES[item]
        else:
            short = [a for a, (k, _) in ALIASES.items() if k in defaults]
            raise ValueError(f"config arg: {item!r} is not key=value with a key in {', '.join(defaults)} "
                             f"(nor a short form: {', '.join(short)})")
        put(key, value, item)
        if (key, value) in IMPLIED:
            put(*IMPLIED[key, value], item)
    return {**defaults, **{k: v for k, (v, _) in given.items()}}


def load(spec: str) -> ml_collections.ConfigDict:
    """'experiments/l6.py:demo' → that file's get_config('demo'); without ':', get_config()."""
    path, _, arg = spec.partition(":")
    if not pathlib.Path(path).is_file():
        raise ValueError(f"config: no such file {path!r} (expected e.g. experiments/l6.py or experiments/l6.py:demo)")
    # A config file is not a module of the package: it is run from its path, as ml_collections' --config does.
    module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config: {path} has no get_config(arg) function")
    return module.get_config(arg) if arg else module.get_config()


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuse a config that cannot train, before anything runs or is written: a ValueError
    `config.<key>: expected ..., got ...`. Accepts the `demo` placeholders (before demo.resolve) and
    real paths (after); local paths must exist, remote ones (gs://...) are left to the reader."""
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
    _check_data(config)
    teacher_record(config)


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
        raise ValueError(f"{where}.{key}: missing (a config built by shallow_pi_jax.training.config has it)")
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


def _local(path) -> bool:
    """A path this process can check: not empty, not the demo placeholder, not a URL (gs://, s3://)."""
    return isinstance(path, str) and path not in ("", DEMO) and "://" not in path


def _check_data(config) -> None:
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
        if _local(spec.data_dir) and not os.path.isdir(spec.data_dir):
            raise ValueError(f"config.data.datasets[{i}].data_dir: expected an existing directory holding "
                             f"{spec.name}/<version>/, got {spec.data_dir!r} (not found)")
        norm_stats = data_config.norm_stats_for(spec)
        if not norm_stats:
            raise ValueError(f"config.data.norm_stats_path: expected a norm_stats.json (or its folder) for dataset "
                             f"{spec.name!r}, got {norm_stats!r}; compute one with "
                             "`python -m shallow_pi_jax.compute_norm_stats`")
        key = f"data.datasets[{i}].norm_stats" if spec.norm_stats else "data.norm_stats_path"
        if _local(norm_stats) and not os.path.exists(norm_stats):
            raise ValueError(f"config.{key}: expected a norm_stats.json or its folder, got {norm_stats!r} (not found)")
    tokenizer = data.tokenizer_path
    _check(config, "data.tokenizer_path", bool(tokenizer), "the PaliGemma sentencepiece model file")
    _check(config, "data.tokenizer_path", not _local(tokenizer) or os.path.isfile(tokenizer),
           "the PaliGemma sentencepiece model file", got=f"{tokenizer} (not found)")
    params = config.teacher.params
    _check(config, "teacher.params", not _local(params) or os.path.exists(params),
           "an openpi params directory", got=f"{params} (not found)")


# The config key that sets each record field, for error messages.
_RECORD_KEYS = {"pi05": "data.pi05", "cameras": "data.cameras", "masked_cameras": "data.datasets[].mapping.cameras",
                "state_in_prompt": "data.discrete_state_input", "max_token_len": "data.max_token_len",
                "action_horizon": "data.horizon", "action_dim": "data.action_dim",
                "robot_action_dim": "data.datasets[].mapping.action_dim",
                "delta_action_mask": "data.delta_action_mask", "quantile_norm": "data.use_quantile_norm"}


def record_from_data(config) -> policy_record.PolicyRecord:
    """The record of what `config.data` feeds the model (what a model trained on it sees)."""
    data = DataConfig.from_any(config.data)
    one = {}
    for i, spec in enumerate(data.datasets):
        fields = {"masked_cameras": tuple(c for c in data.cameras if c not in spec.mapping.camera_names),
                  "robot_action_dim": spec.mapping.action_dim, "delta_action_mask": data.delta_mask_for(spec)}
        for key, value in fields.items():
            # A mixture must feed one policy: the datasets cannot disagree on what it sees or returns.
            if key in one and one[key] != value:
                raise ValueError(f"config.data.datasets[{i}]: {key} is {value!r}, datasets[0] gives {one[key]!r}; "
                                 "every dataset of a mixture must give the policy the same inputs and outputs")
            one[key] = value
    return policy_record.PolicyRecord(
        pi05=data.pi05, cameras=tuple(data.cameras), masked_cameras=one["masked_cameras"],
        state_in_prompt=data.state_in_prompt, max_token_len=data.max_token_len, action_horizon=data.horizon,
        action_dim=data.action_dim, robot_action_dim=one["robot_action_dim"],
        delta_action_mask=one["delta_action_mask"], quantile_norm=data.quantile_norm, source="config.data")


def teacher_record(config) -> policy_record.PolicyRecord:
    """How the teacher sees the world, checked against config.data (ValueError naming both values).

    From the teacher's policy_record.json when it has one, else from config.teacher.preset (an openpi
    config name, or "data"); both given must agree. Without a teacher (plain training) the record is
    config.data's. A contradiction is an error, never an override: a student must see its teacher's inputs."""
    data_record = record_from_data(config)
    params, preset = config.teacher.params, config.teacher.preset
    if not params:
        return data_record
    _check(config, "teacher.preset", preset in ("", "data", *policy_record.OPENPI),
           f"'', 'data' or an openpi config name ({', '.join(policy_record.OPENPI)})")
    own = None
    if _local(params) and os.path.isdir(params):
        root = pathlib.Path(params)
        own = policy_record.read(root.parent if root.name == "params" else root)
    named = {"": None, "data": data_record}.get(preset) or policy_record.OPENPI.get(preset)
    if own is not None and named is not None:
        policy_record.check_same(own, f"the teacher's {policy_record.FILE}", named,
                                 f"config.teacher.preset={preset!r}")
    record = own or named
    if record is None:
        raise ValueError(f"config.teacher.preset: expected the openpi config the teacher was trained with "
                         f"({', '.join(policy_record.OPENPI)}) or 'data', got '' and {params} has no "
                         f"{policy_record.FILE} (openpi's checkpoints record none)")
    where = f"the teacher's {policy_record.FILE}" if own is not None else f"teacher.preset={preset!r}"
    diff = policy_record.differences(record, data_record)
    if diff:
        raise ValueError("config.data contradicts the teacher: " + "; ".join(
            f"{key}: {where} says {want!r}, config.{_RECORD_KEYS[key]} gives {got!r}"
            for key, (want, got) in diff.items()))
    return record


def apply_record(c: ml_collections.ConfigDict, record: policy_record.PolicyRecord) -> None:
    """Set config.data (and the model's prompt length / chunk / cameras) to what `record` says."""
    c.model.max_token_len, c.model.action_horizon = record.max_token_len, record.action_horizon
    c.model.image_keys, c.model.action_dim = tuple(record.cameras), record.action_dim
    match_data_to_model(c.data, c.model)
    c.data.discrete_state_input = record.state_in_prompt
    c.data.use_quantile_norm = record.quantile_norm
    c.data.delta_action_mask = record.delta_action_mask


def flag_error(error: Exception, argv) -> ValueError:
    """One line for a failure of absl / ml_collections flag parsing of train.py's `argv`.

    config_flags raises a bare KeyError/AttributeError for an unknown `--config.x`, and a config file
    that fails to load as a multi-line traceback; this works out from `argv` what was wrong."""
    argv = list(argv)
    spec = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
    if spec is not None:
        try:
            config = load(spec)
        except ValueError as e:  # no such file, a bad key=value after ':'
            return e
        except Exception as e:  # noqa: BLE001 - the config file's own bug, reported as one line
            return ValueError(f"config {spec}: {type(e).__name__}: {e}")
        for arg in argv:
            name, eq, value = arg.partition("=")
            if not name.startswith(("--config.", "--noconfig.")):
                continue
            path = name.split(".", 1)[1]
            node, parts = config, path.split(".")
            for depth, part in enumerate(parts):
                where = ".".join(["config", *parts[:depth]])
                if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                    keys = ", ".join(node.keys()) if isinstance(node, ml_collections.ConfigDict) else "none"
                    return ValueError(f"config.{path}: unknown key {part!r} (in {arg}); {where} has keys {keys}")
                if depth == len(parts) - 1 and eq and isinstance(error, flags.IllegalFlagValueError) \
                        and f"--config.{path}=" in str(error):
                    kind = node.get_type(part).__name__
                    return ValueError(f"config.{path}: expected {kind}, got {value!r} (in {arg})")
                node = node[part]
    lines = str(error).strip().splitlines()
    return ValueError(lines[0] if lines else type(error).__name__)


def demo_model(pi05: bool = True, depth: int = 18) -> ModelConfig:
    """A tiny π0 / π0.5 that trains on 2 CPU cores: 64×64 images, 16×16 patches, 18 thin layers.

    16×16 patches (16 tokens per camera) make a train step ~3× cheaper than 8×8 (0.34 s vs 1.14 s
    at batch 16 on 2 cores), and the rendered objects are still resolved."""
    return ModelConfig(
        pi05=pi05,
        llm=GemmaConfig(width=64, depth=depth, mlp_dim=128, num_heads=4, num_kv_heads=1, head_dim=16),
        expert=GemmaConfig(width=32, depth=depth, mlp_dim=64, num_heads=4, num_kv_heads=1, head_dim=16),
        siglip=SiglipConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(16, 16)),
        vocab_size=512, action_dim=8, action_horizon=10, max_token_len=32, image_keys=DEMO_CAMERAS,
        image_size=(64, 64), dtype="float32")


def base_config(o: dict) -> ml_collections.ConfigDict:
    """The config for parsed keys `o` (every key of DEFAULTS, and depth: None = the teacher's)."""
    pi05 = o["model"] == "pi05"
    demo = o["size"] in ("demo", "tiny")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = ""  # set by --workdir
    model = demo_model(pi05) if demo else ModelConfig.real(pi05=pi05, action_horizon=10, dtype="bfloat16")
    c.model = model.to_dict()  # the teacher's architecture; the student is the same with student.depth

    c.teacher = ml_collections.ConfigDict()
    # openpi params directory of the teacher; "demo" = the bundled demo teacher; "" = no teacher.
    c.teacher.params = "demo" if demo else ""
    c.teacher.dtype = "float32" if demo else "bfloat16"
    # How the teacher sees the world when its directory records none (openpi's checkpoints): an openpi
    # config name (pi05_libero, ...), "data" (it was trained with exactly config.data: the demo teachers),
    # or "" (its own policy_record.json, required). See teacher_record.
    c.teacher.preset = "data" if demo else ""

    c.student = ml_collections.ConfigDict()
    c.student.depth = o["depth"] or model.depth
    c.student.layer_map = o["layer_map"]  # or, with --config.student.layer_map, explicit indices "0,3,7,..."
    c.student.expert_map = o["expert_map"]  # "same": the expert takes layer_map too; else its own map or indices
    c.student.init = o["init"]
    c.student.freeze_vision = False

    c.loss = ml_collections.ConfigDict()
    c.loss.task = 1.0
    c.loss.velocity_kd = 0.0 if o["loss"] == "task_only" else 1.0
    c.loss.attention_kd = 1.0 if o["loss"] == "full" else 0.0
    c.loss.attn_layer = o["attn_layer"]
    c.loss.attn_queries = o["attn_queries"]

    c.optim = ml_collections.ConfigDict()
    if demo:
        c.optim.update(peak_lr=1e-3, warmup_steps=20, decay_steps=200, end_lr=1e-4)
    else:  # Shallow-π / openpi fine-tuning recipe
        c.optim.update(peak_lr=2.5e-5, warmup_steps=1_000, decay_steps=30_000, end_lr=2.5e-6)
    c.optim.update(b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-10, clip_norm=1.0)
    c.optim.ema_decay = ml_collections.FieldReference(None, field_type=float)

    c.num_steps = 200 if demo else 30_000
    c.batch_size = 16 if demo else 64  # global
    c.log_every = 10 if demo else 100
    c.checkpoint_every = 100 if demo else 1_000
    c.keep_checkpoints = 3
    c.async_checkpoint = True

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = 1
    c.mesh.fsdp = -1  # -1: every device on the fsdp axis (batch is split over both axes anyway)
    c.remat = not demo
    c.distributed = "auto"  # auto | on | off: jax.distributed.initialize() on pods / multi-GPU hosts
    c.wandb = ml_collections.ConfigDict(dict(enabled=False, project="shallow_pi_jax", name=""))

    data = default_data_config()
    match_data_to_model(data, c.model)
    if demo:
        # Filled in by shallow_pi_jax.demo at run time (built on first use, offline).
        data.datasets = (dict(name="shallow_pi_demo", data_dir="demo", mapping="libero", weight=1.0,
                              split="train", norm_stats=None, delta_action_mask=None),)
        data.tokenizer_path = "demo"
        data.norm_stats_path = "demo"
        data.shuffle_buffer = 2_000
        # openpi's crop/rotate/colour jitter is for real cameras; on the rendered sim it only moves the
        # objects the actions are relative to and shifts the mid-grey table off 0. The teacher saw none.
        data.augment = False
    c.data = data
    if o["size"] == "tiny":
        apply_tiny(c)
    return c


def match_data_to_model(data: ml_collections.ConfigDict, model) -> None:
    """Make the data pipeline produce what `model` (a ModelConfig dict) consumes: π0 vs π0.5 prompt and
    normalisation, chunk length, action dim, image size, prompt length, cameras."""
    data.pi05 = bool(model["pi05"])
    data.horizon = int(model["action_horizon"])
    data.action_dim = int(model["action_dim"])
    data.image_size = int(model["image_size"][0])
    data.max_token_len = int(model["max_token_len"])
    data.cameras = tuple(model["image_keys"])


def apply_tiny(c: ml_collections.ConfigDict) -> None:
    """Smoke-test sizes: 32×32 images, batch 8, a handful of steps, no augmentation."""
    c.model.image_size = (32, 32)
    c.data.image_size = 32
    c.num_steps, c.batch_size, c.log_every, c.checkpoint_every = 4, 8, 1, 2
    c.data.augment = False
    c.data.shuffle_buffer = 64


def distill_config(student_depth: int, arg: str | None = None) -> ml_collections.ConfigDict:
    """`student_depth` is the experiment's default; `arg` may override it with depth=."""
    return base_config(parse_arg(arg, depth=student_depth, **DEFAULTS))


def teacher_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Plain flow-matching training of a full-depth model (used for the demo teacher); keys: model, size."""
    o = parse_arg(arg, model=DEFAULTS["model"], size=DEFAULTS["size"])
    c = base_config({**DEFAULTS, **o, "depth": None, "loss": "task_only", "init": "scratch"})
    c.teacher.params = ""
    if o["size"] == "demo":  # tiny keeps its smoke-test budget
        c.num_steps = 3000
        c.optim.update(peak_lr=1e-3, warmup_steps=100, decay_steps=3000, end_lr=5e-5)
        c.checkpoint_every = 500
    return c


# openpi trains pi0_libero / pi05_libero on the LeRobot dataset physical-intelligence/libero: these four
# RLDS suites concatenated, frames drawn uniformly. Weighting each suite by its frame count draws frames
# uniformly over the mixture the same way. The weights are approximate: the dataset's meta/info.json
# documents only the total (1,693 episodes, 273,465 frames); the per-suite frame counts are those commonly
# quoted for the *_no_noops RLDS builds (not checked against the files here), which sum to that total.
LIBERO_SUITES = (("libero_spatial_no_noops", 52_970), ("libero_object_no_noops", 66_984),
                 ("libero_goal_no_noops", 52_042), ("libero_10_no_noops", 101_469))
OPENPI_RECIPE_DATA = {
    "pi05_libero": tuple((name, "libero", frames) for name, frames in LIBERO_SUITES),
    "pi0_libero": tuple((name, "libero", frames) for name, frames in LIBERO_SUITES),
    # pi05_droid was trained on joint velocities + gripper position (openpi's examples/droid).
    "pi05_droid": (("droid", "droid_velocity", 1),),
}


def openpi_distill_config(name: str, student_depth: int, arg: str | None = None) -> ml_collections.ConfigDict:
    """Distil the openpi checkpoint trained by openpi's TrainConfig `name`: the model and data settings of
    that config (its record, policy_record.OPENPI[name]) with the paper's distillation recipe on top.

    Keys after ':' as distill_config's, except model and size (fixed by the openpi config)."""
    record = policy_record.openpi(name)
    keys = {k: v for k, v in DEFAULTS.items() if k not in ("model", "size")}
    o = parse_arg(arg, depth=student_depth, **keys)
    c = base_config({**DEFAULTS, **o, "model": "pi05" if record.pi05 else "pi0", "size": "real"})
    apply_record(c, record)
    c.teacher.preset = name
    # Datasets under tfds's data dir ($TFDS_DATA_DIR, default ~/tensorflow_datasets) unless data.datasets is set.
    c.data.datasets = tuple(dict(name=ds, data_dir=None, mapping=mapping, weight=float(weight), split="train",
                                 norm_stats=None, delta_action_mask=None)
                            for ds, mapping, weight in OPENPI_RECIPE_DATA[name])
    return c
