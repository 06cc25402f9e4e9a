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
import pathlib

import ml_collections

from shallow_pi_jax.checkpoint import policy_record
from shallow_pi_jax.data.config import default_config as default_data_config
from shallow_pi_jax.models.config import GemmaConfig, ModelConfig, SiglipConfig

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
DEMO = "demo"  # the placeholder shallow_pi_jax.demo.prepare replaces with the embedded default's paths


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

def apply_record(c: ml_collections.ConfigDict, record: policy_record.PolicyRecord) -> None:
    """Set config.data (and the model's prompt length / chunk / cameras) to what `record` says."""
    c.model.max_token_len, c.model.action_horizon = record.max_token_len, record.action_horizon
    c.model.image_keys, c.model.action_dim = tuple(record.cameras), record.action_dim
    match_data_to_model(c.data, c.model)
    c.data.discrete_state_input = record.state_in_prompt
    c.data.use_quantile_norm = record.quantile_norm
    c.data.delta_action_mask = record.delta_action_mask


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
    # or "" (its own policy_record.json, required). See training.records.teacher_record.
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
