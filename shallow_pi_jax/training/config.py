"""Experiment configs as data. `experiments/*.py` call these builders from `get_config(arg)`.

`arg` is a comma-separated list of options after the config path, big_vision style:

    --config experiments/l6.py                    # π0.5, 18 → 6 layers, the paper's recipe
    --config experiments/l6.py:demo               # embedded demo: tiny model, sim data, ~minutes on CPU
    --config experiments/l6.py:pi0,kd             # π0 teacher, task + velocity KD only

Options: demo, tiny (demo shrunk to 32×32 images and a few steps: a smoke test; give teacher.params),
pi0 | pi05; losses: task_only, kd (task + velocity KD), full (default: + attention KD),
attn_all (attention over all tokens); attention layer: attn_initial, attn_middle (default), attn_late;
student init: scratch (random init, task loss: the from-scratch baseline), first (first-L layers map).
Anything else can be set with `--config.x=y`.
"""
from __future__ import annotations

import ml_collections

from shallow_pi_jax.data.config import default_config as default_data_config
from shallow_pi_jax.models.config import GemmaConfig, ModelConfig, SiglipConfig

OPTIONS = ("demo", "tiny", "pi0", "pi05", "task_only", "kd", "full", "attn_all", "attn_initial", "attn_middle",
           "attn_late", "scratch", "first")

DEMO_CAMERAS = ("base_0_rgb", "left_wrist_0_rgb")


def parse_arg(arg: str | None) -> set[str]:
    opts = {a.strip() for a in (arg or "").split(",") if a.strip()}
    unknown = opts - set(OPTIONS)
    if unknown:
        raise ValueError(f"config arg: unknown option(s) {sorted(unknown)}; known: {OPTIONS}")
    return opts


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


def base_config(opts: set[str], student_depth: int | None) -> ml_collections.ConfigDict:
    """Everything except the method-specific choices; `student_depth=None` = plain training."""
    pi05 = "pi0" not in opts
    demo = "demo" in opts or "tiny" in opts
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.workdir = ""  # set by --workdir
    model = demo_model(pi05) if demo else ModelConfig.real(pi05=pi05, action_horizon=10, dtype="bfloat16")
    c.model = model.to_dict()  # the teacher's architecture; the student is the same with student.depth

    c.teacher = ml_collections.ConfigDict()
    # openpi params directory of the teacher; "demo" = the bundled demo teacher; "" = no teacher.
    c.teacher.params = "demo" if demo else ""
    c.teacher.dtype = "float32" if demo else "bfloat16"

    c.student = ml_collections.ConfigDict()
    c.student.depth = student_depth or model.depth
    c.student.layer_map = "first" if "first" in opts else "uniform"  # uniform | first | last | "0,3,7,..."
    c.student.init = "scratch" if "scratch" in opts else "teacher"  # teacher | scratch
    c.student.freeze_vision = False

    c.loss = ml_collections.ConfigDict()
    c.loss.task = 1.0
    c.loss.velocity_kd = 0.0 if ("task_only" in opts or "scratch" in opts) else 1.0
    c.loss.attention_kd = 0.0 if ("task_only" in opts or "kd" in opts or "scratch" in opts) else 1.0
    c.loss.attn_layer = "initial" if "attn_initial" in opts else "late" if "attn_late" in opts else "middle"
    c.loss.attn_queries = "all" if "attn_all" in opts else "action"

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
        data.datasets = [dict(name="shallow_pi_demo", data_dir="demo", mapping="libero", weight=1.0,
                              split="train", norm_stats=None, delta_action_mask=None)]
        data.tokenizer_path = "demo"
        data.norm_stats_path = "demo"
        data.shuffle_buffer = 2_000
        # openpi's crop/rotate/colour jitter is for real cameras; on the rendered sim it only moves the
        # objects the actions are relative to and shifts the mid-grey table off 0. The teacher saw none.
        data.augment = False
    c.data = data
    if "tiny" in opts:
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
    data.cameras = list(model["image_keys"])


def apply_tiny(c: ml_collections.ConfigDict) -> None:
    """Smoke-test sizes: 32×32 images, batch 8, a handful of steps, no augmentation."""
    c.model.image_size = (32, 32)
    c.data.image_size = 32
    c.num_steps, c.batch_size, c.log_every, c.checkpoint_every = 4, 8, 1, 2
    c.data.augment = False
    c.data.shuffle_buffer = 64


def distill_config(student_depth: int, arg: str | None = None) -> ml_collections.ConfigDict:
    return base_config(parse_arg(arg), student_depth)


def teacher_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Plain flow-matching training of a full-depth model (used for the demo teacher)."""
    opts = parse_arg(arg)
    c = base_config(opts | {"task_only"}, None)
    c.teacher.params = ""
    c.student.init = "scratch"
    if "demo" in opts and "tiny" not in opts:  # tiny keeps its smoke-test budget
        c.num_steps = 3000
        c.optim.update(peak_lr=1e-3, warmup_steps=100, decay_steps=3000, end_lr=5e-5)
        c.checkpoint_every = 500
    return c
