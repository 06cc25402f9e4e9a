r"""Teacher vs student inference cost: FLOPs (XLA cost analysis) split into vision / prefix /
denoising, and measured latency, side by side with ratios.

    python -m shallow_pi_jax.bench_inference                       # π0.5 real sizes, L18 vs L6, 10 steps, 3 cameras
    python -m shallow_pi_jax.bench_inference --student-depth 4 --num-steps 5 --out bench.json
    python -m shallow_pi_jax.bench_inference --latency-size real --latency-dtype bfloat16   # on a GPU host
    python -m shallow_pi_jax.bench_inference --flops-size demo --latency-size demo          # seconds, any machine

FLOPs need no weights (abstract params) and are counted with every layer/step scan unrolled, since
XLA's cost analysis counts a loop body once. Two camera settings are reported: all 3 cameras, and
LIBERO's 2 cameras (right wrist masked): openpi still runs SigLIP on the masked camera, this
project's Policy skips it; the saving is shown.

Latency is the wall time of one jitted `sample_actions` call (batch 1, random weights, after
warm-up; median of --repeats) on the machine it runs on. The real sizes are too slow to time on a
small CPU (tens of seconds per call), so the default latency size is `real` on an accelerator and
`demo` (the tiny embedded demo model) on CPU; the table says which.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from shallow_pi_jax import fileio
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.observation import dummy_observation
from shallow_pi_jax.perf import costs
from shallow_pi_jax.serve.policy import Policy
from shallow_pi_jax.serve.testing import random_params, tiny_config
from shallow_pi_jax.training.config import demo_model

PAPER = {"teacher_tflops": 3.39, "student_tflops": 1.30, "teacher_ms": 25.5, "student_ms": 11.3, "device": "H100"}


def model_config(size: str, pi05: bool, horizon: int | None, max_token_len: int | None) -> ModelConfig:
    if size == "real":
        cfg = ModelConfig.real(pi05=pi05, action_horizon=horizon or 10)
    elif size == "demo":
        cfg = dataclasses.replace(demo_model(pi05), image_keys=("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"))
        cfg = dataclasses.replace(cfg, action_horizon=horizon or cfg.action_horizon)
    elif size == "tiny":
        cfg = tiny_config(depth=18, pi05=pi05, action_horizon=horizon or 5)
    else:
        raise ValueError(f"size: expected real, demo or tiny, got {size!r}")
    if max_token_len:
        cfg = dataclasses.replace(cfg, max_token_len=max_token_len)
    return cfg


def measure_latency(cfg: ModelConfig, num_steps: int, repeats: int, warmup: int, active: tuple[str, ...]) -> dict:
    params = jax.device_put(random_params(cfg, seed=0))
    policy = Policy(cfg, params, num_steps=num_steps, noise_seed=0)
    obs = dummy_observation(cfg, 1)
    obs["image_masks"] = {cam: np.array([cam in active]) for cam in cfg.image_keys}
    obs = jax.device_put(obs)
    start = time.perf_counter()
    policy.sample(obs)
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        policy.sample(obs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy.sample(obs)  # returns host numpy: includes the device → host copy, as a server does
        times.append(1000 * (time.perf_counter() - start))
    del params
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "min_ms": float(np.min(times)), "compile_s": compile_s, "repeats": repeats}


def run(args) -> dict:
    teacher_cfg = model_config(args.flops_size, not args.pi0, args.horizon, args.max_token_len)
    teacher_depth = args.teacher_depth or teacher_cfg.depth
    depths = {"teacher": teacher_depth, "student": args.student_depth}
    all_cams = tuple(teacher_cfg.image_keys)
    libero_cams = all_cams[:2]
    result = {"flops_size": args.flops_size, "flops_stage": "lowered" if args.fast_flops else "compiled",
              "pi05": not args.pi0, "num_steps": args.num_steps,
              "action_horizon": teacher_cfg.action_horizon, "max_token_len": teacher_cfg.max_token_len,
              "depths": depths, "flops": {}, "latency": {}, "device": str(jax.devices()[0].device_kind),
              "backend": jax.default_backend(), "paper": PAPER}
    if not args.skip_flops:
        bar = tqdm(total=2 * 2, desc="FLOPs (compiling unrolled programs)")
        for who, depth in depths.items():
            cfg = teacher_cfg.with_depth(depth)
            full = costs.inference_flops(cfg, num_steps=args.num_steps, compiled=not args.fast_flops)
            bar.update()
            # Skipping a camera changes only the vision part (the prefix keeps its masked slots).
            vision2 = costs.vision_flops(cfg, libero_cams, compiled=not args.fast_flops)
            bar.update()
            result["flops"][who] = {"3 cameras": full.to_dict(),
                                    "2 cameras (masked 3rd skipped)": {
                                        "vision": vision2, "prefix": full.prefix, "denoise": full.denoise,
                                        "total": vision2 + full.prefix + full.denoise,
                                        "cameras": list(libero_cams)}}
        bar.close()
    if not args.skip_latency:
        lat_size = args.latency_size or ("demo" if jax.default_backend() == "cpu" else "real")
        lat_cfg = model_config(lat_size, not args.pi0, args.horizon, args.max_token_len)
        if args.latency_dtype:
            lat_cfg = dataclasses.replace(lat_cfg, dtype=args.latency_dtype)
        result["latency_size"], result["latency_dtype"] = lat_size, lat_cfg.dtype
        for who, depth in tqdm(list(depths.items()), desc=f"latency ({lat_size})"):
            cfg = lat_cfg.with_depth(depth)
            result["latency"][who] = {
                "3 cameras": measure_latency(cfg, args.num_steps, args.repeats, args.warmup, all_cams),
                "2 cameras (masked 3rd skipped)": measure_latency(cfg, args.num_steps, args.repeats, args.warmup,
                                                                  libero_cams)}
    return result


def fmt_flops(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def _fmt_ratio(a, b):
    return f"{a / b:.2f}×" if b else "–"


def format_table(r: dict) -> str:
    d = r["depths"]
    head = f"| | teacher L{d['teacher']} | student L{d['student']} | teacher / student |\n|---|---|---|---|\n"
    lines = []
    for setting in ("3 cameras", "2 cameras (masked 3rd skipped)"):
        if r["flops"]:
            lines.append(f"\n**FLOPs per inference, {setting}** ({'π0.5' if r['pi05'] else 'π0'} {r['flops_size']} "
                         f"sizes, {r['num_steps']} steps, horizon {r['action_horizon']}, "
                         f"{r['max_token_len']} prompt tokens, batch 1)\n\n" + head)
            t, s = r["flops"]["teacher"][setting], r["flops"]["student"][setting]
            for part in ("vision", "prefix", "denoise", "total"):
                lines.append(f"| {part} | {fmt_flops(t[part])} | {fmt_flops(s[part])} "
                             f"| {_fmt_ratio(t[part], s[part])} |\n")
        if r["latency"]:
            t, s = r["latency"]["teacher"][setting], r["latency"]["student"][setting]
            lines.append(f"| latency, median ({r['latency_size']} sizes, {r['latency_dtype']}, {r['backend']}: "
                         f"{r['device']}) | {t['median_ms']:.2f} ms | {s['median_ms']:.2f} ms | "
                         f"{_fmt_ratio(t['median_ms'], s['median_ms'])} |\n")
    if r["flops"]:
        t3, t2 = r["flops"]["teacher"]["3 cameras"], r["flops"]["teacher"]["2 cameras (masked 3rd skipped)"]
        saved = t3["total"] - t2["total"]
        lines.append(f"\nSkipping SigLIP on the masked camera (LIBERO, 2 of 3 cameras) saves {fmt_flops(saved)}FLOPs "
                     f"per inference: {100 * saved / t3['total']:.1f} % of the teacher, "
                     f"{100 * saved / r['flops']['student']['3 cameras']['total']:.1f} % of the student "
                     "(openpi computes it anyway).\n")
        p = r["paper"]
        lines.append(f"Paper (π0.5 L18 → L6, {p['device']}): {p['teacher_tflops']} T → {p['student_tflops']} T FLOPs "
                     f"({p['teacher_tflops'] / p['student_tflops']:.2f}×), {p['teacher_ms']} → {p['student_ms']} ms "
                     f"({p['teacher_ms'] / p['student_ms']:.2f}×).\n")
    return "".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pi0", action="store_true", help="π0 instead of π0.5")
    p.add_argument("--student-depth", type=int, default=6, help="student layers (default: 6)")
    p.add_argument("--teacher-depth", type=int, default=None, help="teacher layers (default: the config's, 18)")
    p.add_argument("--num-steps", type=int, default=10, help="flow integration steps (default: 10)")
    p.add_argument("--horizon", type=int, default=None, help="action chunk (default: 10 real, config's otherwise)")
    p.add_argument("--max-token-len", type=int, default=None, help="prompt tokens (default: 200 π0.5, 48 π0)")
    p.add_argument("--flops-size", default="real", choices=["real", "demo", "tiny"],
                   help="model sizes for the FLOP count (default: real)")
    p.add_argument("--latency-size", default=None, choices=["real", "demo", "tiny"],
                   help="model sizes for timing (default: real on an accelerator, demo on CPU)")
    p.add_argument("--latency-dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype for timing (default: the size's config, float32)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls (default: 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls after compiling (default: 3)")
    p.add_argument("--fast-flops", action="store_true",
                   help="cost analysis of the lowered (unoptimised) HLO: no XLA compile, ~1%% different")
    p.add_argument("--skip-flops", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--out", type=pathlib.Path, default=None, help="write the results as JSON here")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.student_depth < 1 or args.num_steps < 1 or args.repeats < 1:
        print("error: --student-depth, --num-steps and --repeats must be >= 1", file=sys.stderr)
        return 2
    result = run(args)
    print(format_table(result))
    if args.out:
        fileio.write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
