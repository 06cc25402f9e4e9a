"""What the ablation runs: its arms, its budget (AblationConfig) and the paper's numbers it is compared with.

Light on purpose (no JAX): `python -m shallow_pi_jax.ablation --help` lists the arms from here.
"""
from __future__ import annotations

import dataclasses

# arm name → (config arg of recipes.distill_config, what it tests). "uniform" is the paper's map,
# round(linspace(0, L_t − 1, L_s)) for both stacks ([0, 3, 7, 10, 14, 17] at 18 → 6).
ARMS = {
    "task_only": ("loss=task_only", "uniform map, task loss only"),
    "kd": ("loss=kd", "+ velocity KD"),
    "full": ("loss=full", "+ velocity KD + attention KD (middle layer): the Shallow-π recipe"),
    "attn_initial": ("loss=full,attn_layer=initial", "full, attention KD at the initial layer"),
    "attn_late": ("loss=full,attn_layer=late", "full, attention KD at a late layer"),
    "attn_all": ("loss=full,attn_queries=all", "full, attention KD over all query tokens"),
    "scratch": ("init=scratch", "random init, task loss (trained from scratch)"),
    "untrained": (None, "uniform map, no training"),
    "first": ("loss=full,layer_map=first", "first L layers of both stacks, full losses"),
    "published": ("loss=full,layer_map=first,expert_map=uniform",
                  "backbone first L, expert uniform (the published code's map), full losses"),
}
DEFAULT_ARMS = tuple(ARMS)

# Shallow-π (arXiv 2601.20262v1), LIBERO average success (%) of its loss-term ablation (task only;
# + velocity KD; + attention KD) at L9/L6/L4, and its all-token attention ablation at L6. Second-hand:
# transcribed from the project's notes on the paper, not re-read from its tables here (docs/ablation.md).
PAPER = {
    9: {"task_only": 95.4, "kd": 96.2, "full": 96.8},
    6: {"task_only": 93.0, "kd": 93.9, "full": 94.6, "attn_all": 61.5},
    4: {"task_only": 92.3, "kd": 93.9, "full": 94.2},
}


@dataclasses.dataclass(frozen=True)
class AblationConfig:
    out: str
    arms: tuple[str, ...] = DEFAULT_ARMS
    depths: tuple[int, ...] = (6,)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 300  # training steps per arm
    teacher: str = ""  # a teacher checkpoint dir (params/ + assets/norm_stats.json); "" = train one
    teacher_steps: int = 3000  # the bundled teacher's budget; 0 = a random-init teacher (smoke tests)
    episodes: int = 200
    eval_seed: int = 100_000  # evaluation episodes use reset seeds eval_seed .. eval_seed + episodes - 1
    replan_every: int = 5
    num_envs: int = 50
    tiny: bool = False  # 32×32 images, batch 8: the --quick smoke budget
    overrides: tuple[str, ...] = ()  # "x.y=value" applied to every training config
    latency_reps: int = 20
    keep_checkpoints: bool = False

    def __post_init__(self):
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"arms: unknown {unknown}; expected some of {list(ARMS)}")
        if self.teacher_steps < 0:
            raise ValueError(f"teacher_steps: expected >= 0, got {self.teacher_steps}")
        for name in ("steps", "episodes", "replan_every", "num_envs", "latency_reps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if not self.depths or any(d < 1 for d in self.depths):
            raise ValueError(f"depths: expected positive student depths, got {self.depths}")
        if not self.seeds:
            raise ValueError("seeds: expected at least one training seed")

    @property
    def eval_seeds(self) -> range:
        return range(self.eval_seed, self.eval_seed + self.episodes)
