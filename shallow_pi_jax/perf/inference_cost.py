"""Teacher vs student inference cost, FLOPs and latency side by side: `bench_inference`'s work.

    result = run(args)            # args: the command's flags (python -m shallow_pi_jax.bench_inference --help)
    print(format_table(result))

The command's help says what is counted and how latency is timed.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import resource
import time

import jax
import numpy as np
from tqdm import tqdm

from shallow_pi_jax import cli, fileio
from shallow_pi_jax.checkpoint import policy_dir
from shallow_pi_jax.models.config import ModelConfig, tiny_config
from shallow_pi_jax.models.observation import dummy_observation
from shallow_pi_jax.models.params import random_params_in_dtype
from shallow_pi_jax.models.prefix import PrefixPlan, full_plan, prompt_bucket
from shallow_pi_jax.perf import costs
from shallow_pi_jax.serve.policy import Policy
from shallow_pi_jax.training.recipes import demo_model

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


def measure_latency(cfg: ModelConfig, num_steps: int, repeats: int, warmup: int, active: tuple[str, ...],
                    prompt_tokens: int | None = None, params=None) -> dict:
    """`prompt_tokens` None: openpi's prefix (masked cameras' tokens kept, whole prompt); else the
    compacted prefix for a prompt of that many valid tokens. `params` default: random, created here."""
    if params is None:
        params = random_params_in_dtype(cfg, seed=0)
    policy = Policy(cfg, params, num_steps=num_steps, noise_seed=0, compact_prefix=prompt_tokens is not None)
    obs = dummy_observation(cfg, 1)
    obs["image_masks"] = {cam: np.array([cam in active]) for cam in cfg.image_keys}
    if prompt_tokens is not None:
        obs["tokenized_prompt_mask"][:, prompt_tokens:] = False
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
    return {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90)),
            "min_ms": float(np.min(times)), "compile_s": compile_s, "repeats": repeats}


def peak_rss_mib() -> float:
    """This process's resident-memory high-water mark (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_latency(cfg: ModelConfig, num_steps: int, repeats: int, warmup: int,
                  settings: dict[str, tuple[tuple[str, ...], int | None]]) -> dict:
    """Every setting's latency for one model, its params created once, directly in cfg.dtype; and
    the process's peak RSS. Meant to run in a child process of its own (`in_child`), so that the
    peak is this model's alone and one model at a time is in memory."""
    start = time.perf_counter()
    params = jax.block_until_ready(random_params_in_dtype(cfg, seed=0, dtype=cfg.dtype))
    out = {"init_s": time.perf_counter() - start, "params": int(sum(x.size for x in jax.tree.leaves(params))),
           "param_dtype": str(jax.tree.leaves(params)[0].dtype), "settings": {}}
    for name, (cams, prompt_tokens) in settings.items():
        out["settings"][name] = measure_latency(cfg, num_steps, repeats, warmup, cams, prompt_tokens, params=params)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def in_child(fn, *args):
    """fn(*args) in a fresh spawned Python process (not forked: the parent's JAX runtime and arrays
    are not inherited), so its memory is its own and is returned to the system when it exits."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


ALL3, MASKED, COMPACT = "3 cameras", "2 cameras (masked 3rd skipped)", "compacted"


def checkpoint_model(args) -> tuple[ModelConfig, int, str]:
    """(the directory's model, its teacher's depth, its path) for --checkpoint."""
    pd = policy_dir.read(cli.policy_path(args.checkpoint))
    cfg = pd.model_config(action_horizon=args.horizon, max_token_len=args.max_token_len)
    if args.student_depth is not None and args.student_depth != cfg.depth:
        raise cli.UsageError(f"--student-depth: {pd.root} holds {cfg.depth} layers, got {args.student_depth}")
    teacher_depth = args.teacher_depth or int((pd.layer_map or {}).get("teacher_depth") or cfg.depth)
    return cfg, teacher_depth, str(pd.root)


def run(args) -> dict:
    if args.checkpoint:
        teacher_cfg, teacher_depth, source = checkpoint_model(args)
        student_depth, flops_size = teacher_cfg.depth, source
        teacher_cfg = teacher_cfg.with_depth(teacher_depth)
    else:
        teacher_cfg = model_config(args.flops_size, not args.pi0, args.horizon, args.max_token_len)
        teacher_depth, student_depth = args.teacher_depth or teacher_cfg.depth, args.student_depth or 6
        flops_size = args.flops_size
    depths = {"teacher": teacher_depth, "student": student_depth}
    all_cams = tuple(teacher_cfg.image_keys)
    # LIBERO's setting (the 3rd camera masked) only exists for a 3-camera model.
    settings = {ALL3: all_cams, MASKED: all_cams[:2]} if len(all_cams) == 3 else {f"{len(all_cams)} cameras": all_cams}
    if args.prompt_tokens > teacher_cfg.max_token_len:
        raise cli.UsageError(f"--prompt-tokens: expected <= max_token_len ({teacher_cfg.max_token_len}), "
                             f"got {args.prompt_tokens}")
    plan = PrefixPlan(settings[MASKED] if MASKED in settings else all_cams,
                      prompt_bucket(args.prompt_tokens, teacher_cfg.max_token_len))
    settings[COMPACT] = plan.cameras
    result = {"flops_size": flops_size, "flops_stage": "lowered" if args.fast_flops else "compiled",
              "pi05": teacher_cfg.pi05, "num_steps": args.num_steps,
              "action_horizon": teacher_cfg.action_horizon, "max_token_len": teacher_cfg.max_token_len,
              "prompt_tokens": args.prompt_tokens, "prompt_bucket": plan.prompt_len,
              "prefix_len": {"openpi": teacher_cfg.prefix_len, COMPACT: plan.prefix_len(teacher_cfg)},
              "depths": depths, "settings": list(settings), "flops": {}, "latency": {}, "latency_model": {},
              "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(), "paper": PAPER}
    if not args.skip_flops:
        bar = tqdm(total=2 * len(settings), desc="FLOPs (compiling unrolled programs)")
        for who, depth in depths.items():
            cfg = teacher_cfg.with_depth(depth)
            full = costs.inference_flops(cfg, num_steps=args.num_steps, compiled=not args.fast_flops)
            bar.update()
            result["flops"][who] = {next(iter(settings)): full.to_dict()}
            if MASKED in settings:
                # Skipping a camera changes only the vision part (the prefix keeps its masked slots).
                vision2 = costs.vision_flops(cfg, settings[MASKED], compiled=not args.fast_flops)
                bar.update()
                result["flops"][who][MASKED] = {"vision": vision2, "prefix": full.prefix, "denoise": full.denoise,
                                                "total": vision2 + full.prefix + full.denoise,
                                                "cameras": list(settings[MASKED])}
            result["flops"][who][COMPACT] = costs.inference_flops(
                cfg, num_steps=args.num_steps, compiled=not args.fast_flops, plan=plan).to_dict()
            bar.update()
        bar.close()
    if not args.skip_latency:
        if args.checkpoint:
            lat_size, lat_cfg = flops_size, teacher_cfg
        else:
            lat_size = args.latency_size or ("demo" if jax.default_backend() == "cpu" else "real")
            lat_cfg = model_config(lat_size, not args.pi0, args.horizon, args.max_token_len)
            if args.prompt_tokens > lat_cfg.max_token_len:
                raise cli.UsageError(f"--prompt-tokens: expected <= max_token_len of the {lat_size} sizes "
                                     f"({lat_cfg.max_token_len}), got {args.prompt_tokens}")
        if args.latency_dtype:
            lat_cfg = dataclasses.replace(lat_cfg, dtype=args.latency_dtype)
        result["latency_size"], result["latency_dtype"] = lat_size, lat_cfg.dtype
        # Timed: openpi's prefix and the compacted one (the masked-camera-only setting is a FLOPs row).
        timed = {name: (settings[name], args.prompt_tokens if name == COMPACT else None)
                 for name in (next(iter(settings)), COMPACT)}
        result["latency_settings"] = list(timed)
        lat_plan = PrefixPlan(plan.cameras, prompt_bucket(args.prompt_tokens, lat_cfg.max_token_len))
        result["latency_prefix_len"] = {timed_name: (lat_plan if timed_name == COMPACT else full_plan(lat_cfg))
                                        .prefix_len(lat_cfg) for timed_name in timed}
        result["latency_flops"] = latency_flops(result, args, lat_cfg, lat_size, depths, timed, lat_plan)
        for who, depth in tqdm(list(depths.items()), desc="latency (one model per child process)"):
            m = in_child(model_latency, lat_cfg.with_depth(depth), args.num_steps, args.repeats, args.warmup, timed)
            result["latency"][who] = m.pop("settings")
            result["latency_model"][who] = m
    return result


def latency_flops(result, args, lat_cfg, lat_size, depths, timed, plan) -> dict:
    """Total FLOPs of each timed program, for the latency-vs-FLOPs ratios: reused from the FLOP
    tables when they were counted at the timed sizes, else counted here (lowered HLO, no compile)."""
    same = result["flops"] and lat_size == result["flops_size"]
    out = {}
    for who, depth in depths.items():
        out[who] = {}
        for name in timed:
            if same:
                out[who][name] = result["flops"][who][name]["total"]
            else:
                out[who][name] = costs.inference_flops(lat_cfg.with_depth(depth), num_steps=args.num_steps,
                                                       compiled=False, plan=plan if name == COMPACT else None).total
    return out


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
    for setting in r["settings"]:
        if r["flops"]:
            label = setting
            if setting == COMPACT:
                label = (f"compacted prefix ({len(r['flops']['teacher'][COMPACT]['cameras'])} cameras, "
                         f"{r['prompt_bucket']}-token prompt bucket: {r['prefix_len'][COMPACT]} prefix tokens "
                         f"instead of {r['prefix_len']['openpi']})")
            lines.append(f"\n**FLOPs per inference, {label}** ({'π0.5' if r['pi05'] else 'π0'} {r['flops_size']} "
                         f"sizes, {r['num_steps']} steps, horizon {r['action_horizon']}, "
                         f"{r['max_token_len']} prompt tokens, batch 1)\n\n" + head)
            t, s = r["flops"]["teacher"][setting], r["flops"]["student"][setting]
            for part in ("vision", "prefix", "denoise", "total"):
                lines.append(f"| {part} | {fmt_flops(t[part])} | {fmt_flops(s[part])} "
                             f"| {_fmt_ratio(t[part], s[part])} |\n")
        if r["flops"] and r["latency"] and setting in r["latency"]["teacher"]:
            t, s = r["latency"]["teacher"][setting], r["latency"]["student"][setting]
            lines.append(f"| latency, median ({r['latency_size']} sizes, {r['latency_dtype']}, {r['backend']}: "
                         f"{r['device']}) | {t['median_ms']:.2f} ms | {s['median_ms']:.2f} ms | "
                         f"{_fmt_ratio(t['median_ms'], s['median_ms'])} |\n")
    if r["flops"] and MASKED in r["settings"]:
        t3, t2 = r["flops"]["teacher"][ALL3], r["flops"]["teacher"][MASKED]
        saved = t3["total"] - t2["total"]
        lines.append(f"\nSkipping SigLIP on the masked camera (LIBERO, 2 of 3 cameras) saves {fmt_flops(saved)}FLOPs "
                     f"per inference: {100 * saved / t3['total']:.1f} % of the teacher, "
                     f"{100 * saved / r['flops']['student'][ALL3]['total']:.1f} % of the student "
                     "(openpi computes it anyway).\n")
    if r["flops"]:
        lines.append(side_by_side(r))
        p = r["paper"]
        lines.append(f"Paper (π0.5 L18 → L6, {p['device']}): {p['teacher_tflops']} T → {p['student_tflops']} T FLOPs "
                     f"({p['teacher_tflops'] / p['student_tflops']:.2f}×), {p['teacher_ms']} → {p['student_ms']} ms "
                     f"({p['teacher_ms'] / p['student_ms']:.2f}×).\n")
    if r["latency"]:
        lines.append(latency_side_by_side(r))
    return "".join(lines)


def latency_side_by_side(r: dict) -> str:
    """Each timed program against openpi's teacher: the latency ratio next to the FLOP ratio, the
    fraction of the FLOP ratio the latency reached, and each model's peak memory."""
    d, lat, fl = r["depths"], r["latency"], r["latency_flops"]
    openpi_name = r["latency_settings"][0]
    base_ms, base_flops = lat["teacher"][openpi_name]["median_ms"], fl["teacher"][openpi_name]
    out = [f"\n**Latency side by side** ({r['latency_size']} sizes, {r['latency_dtype']}, batch 1, "
           f"{r['num_steps']} steps, {r['backend']}: {r['device']}; median of {lat['teacher'][openpi_name]['repeats']} "
           "after warm-up; one model per child process, params created in their dtype)\n\n"
           "| | prefix tokens | FLOPs | FLOP ratio | latency | latency ratio | fraction of FLOP ratio reached "
           "| peak RSS of the model's process |\n|---|---|---|---|---|---|---|---|\n"]
    for who in ("teacher", "student"):
        for name in r["latency_settings"]:
            ms, flops = lat[who][name]["median_ms"], fl[who][name]
            flop_ratio, ms_ratio = base_flops / flops, base_ms / ms
            label = f"{'openpi prefix' if name == openpi_name else 'compacted'}, {who} L{d[who]}"
            out.append(f"| {label} | {r['latency_prefix_len'][name]} | {fmt_flops(flops)} | {flop_ratio:.2f}× "
                       f"| {ms:.1f} ms | {ms_ratio:.2f}× | {100 * ms_ratio / flop_ratio:.0f} % "
                       f"| {r['latency_model'][who]['peak_rss_mib'] / 1024:.2f} GiB |\n")
    sizes = ", ".join(f"{w}: {fmt_flops(m['params'])} {m['param_dtype']}" for w, m in r["latency_model"].items())
    out.append(f"\nRatios: openpi-prefix teacher L{d['teacher']} / the row; fraction = latency ratio / FLOP ratio "
               f"(100 % = time proportional to FLOPs). Peak RSS includes the params ({sizes}) and XLA's compile.\n")
    return "".join(out)


def side_by_side(r: dict) -> str:
    """openpi's way (every camera, the whole padded prompt) next to the compacted teacher and student."""
    d, f = r["depths"], r["flops"]
    openpi = f["teacher"][r["settings"][0]]["total"]
    rows = [(f"openpi, teacher L{d['teacher']}", f["teacher"][r["settings"][0]], r["prefix_len"]["openpi"]),
            (f"openpi, student L{d['student']}", f["student"][r["settings"][0]], r["prefix_len"]["openpi"]),
            (f"compacted, teacher L{d['teacher']}", f["teacher"][COMPACT], r["prefix_len"][COMPACT]),
            (f"compacted, student L{d['student']}", f["student"][COMPACT], r["prefix_len"][COMPACT])]
    out = [f"\n**Side by side** (openpi: all cameras, {r['max_token_len']}-token prompt; compacted: masked cameras "
           f"and prompt padding past {r['prompt_bucket']} tokens dropped, for a {r['prompt_tokens']}-token prompt)\n\n"
           "| | prefix tokens | vision | prefix | denoise | total | openpi teacher / this |\n"
           "|---|---|---|---|---|---|---|\n"]
    for name, x, n in rows:
        out.append(f"| {name} | {n} | {fmt_flops(x['vision'])} | {fmt_flops(x['prefix'])} | {fmt_flops(x['denoise'])} "
                   f"| {fmt_flops(x['total'])} | {_fmt_ratio(openpi, x['total'])} |\n")
    teacher = f["teacher"][COMPACT]["total"]
    out.append(f"\nCompaction alone (no layer removed) makes the teacher L{d['teacher']} {_fmt_ratio(openpi, teacher)} "
               f"cheaper than openpi's ({fmt_flops(openpi)} → {fmt_flops(teacher)}FLOPs); the compacted student "
               f"L{d['student']} is {_fmt_ratio(openpi, f['student'][COMPACT]['total'])} cheaper.\n")
    return "".join(out)


def bench_inference(args) -> dict:
    """run(args), its table printed and, with args.out, its JSON written."""
    result = run(args)
    print(format_table(result))
    if args.out:
        fileio.write_json(args.out, result)
        print(f"wrote {args.out}")
    return result
