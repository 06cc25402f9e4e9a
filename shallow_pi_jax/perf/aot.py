"""Ahead-of-time compilation of the trainer's step and of the sampler, for TPU slices we do not have.

With `libtpu` installed (`pip install -e .[tpu]`), XLA's TPU compiler runs on any host: a named
topology gives compile-only TPU devices, the trainer's own mesh and shardings are built on them,
and the step is lowered from abstract inputs (no weights, no data) and compiled. The executable's
memory analysis says whether the step fits a chip's HBM; its cost analysis gives FLOPs and XLA's
estimated run time.

    topo = tpu_topology("v5e:4x4")
    mesh = sharding.make_mesh(1, -1, devices=topo.devices)
    report = train_step_report(config, mesh, topo.chip, global_batch=64, kind="kd")
    print("\\n".join(format_report(report)))

XLA's cost analysis counts the body of a loop once, whatever its trip count, and the model scans
over layers. So the costs come from a second, small model: every depth set to 1–2 with every scan
unrolled (straight-line code XLA counts fully), one compile per depth raised by one; the cost is
linear in each depth, so these few compiles extrapolate to the real depths exactly (see
`extrapolated_cost`). Memory always comes from the real, scanned program.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from shallow_pi_jax import verbosity
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.observation import dummy_observation
from shallow_pi_jax.models.params import param_shapes
from shallow_pi_jax.models.pi0 import Pi0
from shallow_pi_jax.perf.costs import compile_timed, matmul_flops, unroll_scans, xla_cost
from shallow_pi_jax.training import build, sharding
from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training.metrics import memory_summary

GiB = 2 ** 30
# A placeholder teacher path: only the teacher's shapes are used, nothing is read.
ABSTRACT_TEACHER = "<abstract teacher: shapes only>"


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: int
    peak_bf16_flops: float  # per chip, dense bf16 matmul peak (public spec sheets)
    megacore: bool = False  # two TensorCores presented as one device


# Public per-chip figures (cloud.google.com/tpu/docs/system-architecture-tpu-vm).
CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, megacore=True),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, megacore=True),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12),
}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})$")


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    chip: Chip
    devices: tuple


def libtpu_missing() -> Optional[str]:
    """None if TPU compilation is possible here, else why not (for messages and test skips)."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        return ("libtpu is not installed: `pip install -e .[tpu]` (or `pip install libtpu==<version of "
                f"jax[tpu]=={jax.__version__}>`)")
    return None


def quiet_libtpu_env() -> None:
    """Environment for compile-only use of libtpu on a host without TPUs; call before jax starts.

    Without these, libtpu logs errors about missing TPU worker metadata, and its single-process
    lock file stops a second compiling process (a test next to a running tool) from starting.
    """
    verbosity.quiet_libtpu()
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def tpu_topology(name: str) -> Topology:
    """Compile-only devices of a TPU slice named like Cloud TPU does: v5e:4x4, v4:2x2x2, v5p:2x2x2."""
    m = _TOPOLOGY.match(name.strip())
    if not m:
        raise ValueError(f"topology: expected <generation>:<AxB[xC]> with generation in {sorted(CHIPS)}, "
                         f"e.g. v5e:4x4 or v4:2x2x2; got {name!r}")
    reason = libtpu_missing()
    if reason:
        raise RuntimeError(reason)
    from jax.experimental import topologies

    chip = CHIPS[m.group(1)]
    kwargs = {"chip_config_name": "megacore"} if m.group(1) == "v4" else {}  # v5p is megacore by default
    dims = [int(x) for x in m.group(2).split("x")]
    if int(np.prod(dims)) < 4:  # below one host's default 2x2 chips: a single-host slice of its own size
        kwargs["chips_per_host_bounds"] = tuple(dims + [1] * (3 - len(dims)))
    topo = topologies.get_topology_desc(platform="tpu", topology_name=name.strip(), **kwargs)
    return Topology(name.strip(), chip, tuple(topo.devices))


def parse_mesh(text: Optional[str], config) -> tuple[int, int]:
    """'data=2,fsdp=8' → (2, 8); None → the config's mesh (-1 = the rest of the devices)."""
    if not text:
        return int(config.mesh.data), int(config.mesh.fsdp)
    sizes = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in (sharding.DATA, sharding.FSDP) or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"mesh: expected 'data=<int>,fsdp=<int>' (-1 = the rest), got {text!r}")
        sizes[key.strip()] = int(value)
    fsdp = sizes.get(sharding.FSDP, -1)
    return sizes.get(sharding.DATA, 1 if fsdp == -1 else -1), fsdp


# ----------------------------------------------------------------------------- the train steps

def step_config(config, kind: str):
    """A copy of an experiment config for the fused distillation step ("kd") or plain student ("plain").

    "plain" is the same student trained on the task loss alone: no teacher forward, no KD terms.
    """
    c = copy.deepcopy(config)
    if kind == "kd":
        c.teacher.params = c.teacher.params or ABSTRACT_TEACHER
    elif kind == "plain":
        c.teacher.params = ""
    else:
        raise ValueError(f"step kind: expected 'kd' or 'plain', got {kind!r}")
    return c


def train_step_and_args(config, mesh, global_batch: int):
    """The trainer's jitted sharded step and abstract sharded (state, batch, rng, teacher) for it."""
    sharding.check_batch_divisible(global_batch, mesh)
    return build.abstract_step_inputs(run_plan.derive(config), mesh, global_batch)


def _train_depths(config, kind: str) -> dict[str, int]:
    d = {"student": int(config.student.depth), "vision": int(config.model.siglip.depth)}
    if kind == "kd":
        d["teacher"] = int(config.model.llm.depth)
    return d


def _with_train_depths(config, depths: Mapping[str, int]):
    c = copy.deepcopy(config)
    c.student.depth = depths["student"]
    c.model.siglip.depth = depths["vision"]
    if "teacher" in depths:
        c.model.llm.depth = c.model.expert.depth = depths["teacher"]
    elif c.teacher.params == "":  # plain training: the model config's depth must not be below the student's
        c.model.llm.depth = c.model.expert.depth = max(depths["student"], 1)
    # An explicit layer list belongs to the real depths; the small models use the same strategy.
    if str(c.student.layer_map) not in ("uniform", "first", "last"):
        c.student.layer_map = "uniform"
    return c


# ----------------------------------------------------------------------------- inference

def inference_fn(cfg: ModelConfig, num_steps: int):
    model = Pi0(cfg)

    def sample(params, obs, noise):
        return model.apply({"params": params}, None, obs, num_steps=num_steps, noise=noise, method=Pi0.sample_actions)
    return sample


def inference_args(cfg: ModelConfig, device, batch_size: int = 1):
    """Abstract params (in the config's dtype), observation and noise, placed on one device."""
    sh = jax.sharding.SingleDeviceSharding(device)
    dt = jnp.dtype(cfg.dtype)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dt if jnp.issubdtype(x.dtype, jnp.floating)
                                                         else x.dtype, sharding=sh), param_shapes(cfg))
    obs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                       dummy_observation(cfg, batch_size))
    noise = jax.ShapeDtypeStruct((batch_size, cfg.action_horizon, cfg.action_dim), jnp.float32, sharding=sh)
    return params, obs, noise


def _with_model_depths(cfg: ModelConfig, depths: Mapping[str, int]) -> ModelConfig:
    cfg = cfg.with_depth(depths["layers"])
    return dataclasses.replace(cfg, siglip=dataclasses.replace(cfg.siglip, depth=depths["vision"]))


# ----------------------------------------------------------------------------- compiling and costs

def extrapolated_cost(make: Callable[[Mapping[str, int]], tuple], depths: Mapping[str, int],
                      base: Mapping[str, int], cache: Optional[dict] = None) -> dict[str, Any]:
    """XLA's cost at `depths` from unrolled compiles at `base` and at base + 1 in each depth.

    `make(depths) -> (fn, args)`. With every scan unrolled, XLA's cost of a program is the sum of
    its ops' costs, and raising one depth by one adds one more copy of the same layer; so
    cost(depths) = cost(base) + Σ_k (depths[k] − base[k]) · (cost(base + e_k) − cost(base)).
    `cache` (depths → cost) may be shared by calls whose `make` builds the same programs, e.g. a
    teacher and its student, which differ only in depth.
    """
    cache = {} if cache is None else cache

    def cost(d):
        key = tuple(sorted(d.items()))
        if key not in cache:
            fn, args = make(d)
            compiled, seconds = compile_timed(unroll_scans(fn, *args), args)
            cache[key] = (xla_cost(compiled), seconds)
            return cache[key]
        return cache[key][0], 0.0

    c0, compile_s = cost(base)
    out = {m: c0[m] for m in ("flops", "seconds")}
    per_layer = {}
    for k in depths:
        ck, s = cost({**base, k: base[k] + 1})
        compile_s += s
        per_layer[k] = {m: ck[m] - c0[m] for m in ("flops", "seconds")}
        for m in ("flops", "seconds"):
            out[m] += (depths[k] - base[k]) * per_layer[k][m]
    return {**out, "per_layer": per_layer, "compile_s": compile_s}


# ----------------------------------------------------------------------------- reports

@dataclasses.dataclass
class Report:
    name: str
    topology: str
    chip: Chip
    mesh: dict
    global_batch: int
    memory: dict  # per device: argument, output, temp, generated_code, alias, total (bytes)
    compile_s: float
    loop_once: dict  # XLA's cost of the scanned program (each loop body counted once)
    matmul_flops: float  # per device, from the jaxpr with trip counts (global / devices)
    cost: Optional[dict] = None  # extrapolated XLA cost per device: flops, seconds

    @property
    def fits(self) -> bool:
        return self.memory.get("total", 0) <= self.chip.hbm_bytes

    @property
    def flops(self) -> float:
        return self.cost["flops"] if self.cost else float("nan")

    @property
    def seconds(self) -> float:
        """XLA's estimate, or NaN where it is missing or faster than the chip's peak allows (libtpu's
        `optimal_seconds` is unreliable on some programs; a sub-roofline time is certainly wrong)."""
        s = self.cost["seconds"] if self.cost else float("nan")
        roofline = self.matmul_flops / self.chip.peak_bf16_flops
        return s if s >= 0.9 * roofline else float("nan")  # 0.9: XLA may CSE a little of the jaxpr's work

    @property
    def samples_per_s(self) -> float:
        return self.global_batch / self.seconds

    @property
    def mfu(self) -> float:
        """Model FLOPs utilisation: matmul FLOPs per chip / (estimated time × chip peak)."""
        return self.matmul_flops / (self.seconds * self.chip.peak_bf16_flops)

    def to_dict(self) -> dict:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "chip"}
        d.update(chip=self.chip.name, hbm_bytes=self.chip.hbm_bytes, peak_bf16_flops=self.chip.peak_bf16_flops,
                 fits=self.fits, flops=self.flops, seconds=self.seconds, samples_per_s=self.samples_per_s,
                 mfu=self.mfu)
        return d


def train_step_report(config, mesh, chip: Chip, global_batch: int, kind: str = "kd", topology: str = "",
                      estimate: bool = True, base: Optional[Mapping[str, int]] = None) -> Report:
    """Compile the trainer's `kind` step ("kd" fused distillation, or "plain" student) on `mesh`."""
    c = step_config(config, kind)
    step, args = train_step_and_args(c, mesh, global_batch)
    compiled, compile_s = compile_timed(step, args)
    n = mesh.devices.size
    flops = matmul_flops(step, *args) / n
    cost = None
    if estimate:
        depths = _train_depths(c, kind)
        base = dict(base or {"student": 1, "vision": 1, **({"teacher": 2} if kind == "kd" else {})})

        def make(d):
            return train_step_and_args(_with_train_depths(c, d), mesh, global_batch)
        cost = extrapolated_cost(make, depths, base)
    name = {"kd": "fused KD step", "plain": "plain student step"}[kind]
    return Report(name, topology, chip, dict(mesh.shape), global_batch, memory_summary(compiled), compile_s,
                  xla_cost(compiled), flops, cost)


def inference_report(cfg: ModelConfig, device, chip: Chip, num_steps: int = 10, batch_size: int = 1,
                     name: str = "sample_actions", topology: str = "", estimate: bool = True,
                     cost_cache: Optional[dict] = None) -> Report:
    """Compile `sample_actions` of `cfg` for one chip; cost extrapolated from depth-1/2 unrolled models.

    Pass the same `cost_cache` for models that differ only in depth (teacher, student)."""
    fn, args = inference_fn(cfg, num_steps), inference_args(cfg, device, batch_size)
    compiled, compile_s = compile_timed(fn, args)
    cost = None
    if estimate:
        depths = {"layers": cfg.depth, "vision": cfg.siglip.depth}

        def make(d):
            small = _with_model_depths(cfg, d)
            return inference_fn(small, num_steps), inference_args(small, device, batch_size)
        cost = extrapolated_cost(make, depths, {"layers": 1, "vision": 1}, cache=cost_cache)
    return Report(name, topology, chip, {"devices": 1}, batch_size, memory_summary(compiled), compile_s,
                  xla_cost(compiled), matmul_flops(fn, *args), cost)


def _bytes(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB / 10 else f"{n / 2 ** 20:.1f} MiB"


def _flops(n: float) -> str:
    return f"{n / 1e12:.3f} TFLOP" if n >= 1e11 else f"{n / 1e9:.3f} GFLOP"


def format_report(r: Report) -> list[str]:
    m, hbm = r.memory, r.chip.hbm_bytes
    lines = [f"{r.name} on {r.topology or r.chip.name} (mesh {r.mesh}, global batch {r.global_batch}); "
             f"compiled in {r.compile_s:.0f}s",
             "  per chip: " + ", ".join(f"{k} {_bytes(m.get(k, 0))}" for k in
                                        ("argument", "output", "alias", "temp", "generated_code")),
             f"  total {_bytes(m.get('total', 0))} of {hbm / GiB:.0f} GiB HBM ({100 * m.get('total', 0) / hbm:.1f}%)"
             f" -> {'fits' if r.fits else 'DOES NOT FIT'}"]
    if r.cost:
        lines += [f"  FLOPs per chip per step: {_flops(r.flops)} (XLA; matmuls alone {_flops(r.matmul_flops)})",
                  f"  XLA estimated step time: {r.seconds * 1e3:.2f} ms -> {r.samples_per_s:.1f} samples/s, "
                  f"MFU {100 * r.mfu:.1f}% of {r.chip.peak_bf16_flops / 1e12:.0f} TFLOP/s bf16"]
    else:
        lines.append(f"  matmul FLOPs per chip per step: {_flops(r.matmul_flops)} "
                     "(no XLA time estimate: --no-estimate)")
    return lines


def fit_advice(r: Report) -> str:
    over = r.memory.get("total", 0) - r.chip.hbm_bytes
    return (f"{r.name} needs {r.memory.get('total', 0) / GiB:.2f} GiB per chip, {over / GiB:.2f} GiB over the "
            f"{r.chip.hbm_bytes / GiB:.0f} GiB of a {r.chip.name}. Try: all devices on fsdp (--mesh data=1,fsdp=-1), "
            f"a smaller --global-batch (temp {r.memory.get('temp', 0) / GiB:.2f} GiB scales with it), remat on "
            f"(--remat on), student.freeze_vision (no vision grads/optimizer state), or a larger slice.")
