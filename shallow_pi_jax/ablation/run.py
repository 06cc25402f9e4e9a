"""The closed-loop distillation ablation on the bundled simulator (`python -m shallow_pi_jax.ablation` is the CLI).

Each arm is a `key=value` config arg of `recipes.distill_config` (or, for `untrained`, the
uniform-map student evaluated without training). Every trained arm gets the same budget (steps,
batch, schedule); every model is evaluated on the same evaluation episodes (plain-int reset seeds
from `eval_seed`, never seen in training and never used to choose anything).

Results are one JSON file per (depth, arm, seed) under `out/results/`; a finished file is never
redone, and the trainer resumes an interrupted run from its checkpoints, so re-running the same
command continues where it stopped. `report(out)` pools them into results.json, results.md and
results.png.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from shallow_pi_jax import demo, fileio
from shallow_pi_jax.ablation.config import ARMS, AblationConfig
from shallow_pi_jax.data import transforms
from shallow_pi_jax.eval.closed_loop import evaluate
from shallow_pi_jax.models.params import init_params
from shallow_pi_jax.serve.policy import (
    Policy,
    demo_tokenizer_path,
    load_checkpoint,
    load_policy,
    serving_data_config,
    warmup_observation,
)
from shallow_pi_jax.serve.presets import get_preset
from shallow_pi_jax.training import loop, recipes
from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training.checkpoints import export_student
from shallow_pi_jax.training.layer_map import make_layer_map
from shallow_pi_jax.training.student_init import student_params


def write_json(path: pathlib.Path, obj) -> None:
    """Atomic: a reader (or a resumed run) never sees a half-written result."""
    fileio.write_json(path, obj, sort_keys=True)


def parse_override(item: str) -> tuple[str, object]:
    if "=" not in item:
        raise ValueError(f"override: expected 'field.path=value', got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def apply_overrides(c, overrides: Sequence[str]) -> None:
    for item in overrides:
        key, value = parse_override(item)
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            if p not in node:
                raise ValueError(f"override {item!r}: config has no field {p!r}")
            node = node[p]
        if leaf not in node:
            raise ValueError(f"override {item!r}: config has no field {key!r}")
        node[leaf] = value


def _budget(c, steps: int) -> None:
    """Same schedule shape for every arm: warmup 1/15 of the run, cosine to the end."""
    c.num_steps = steps
    c.optim.warmup_steps = max(1, min(c.optim.warmup_steps, steps // 15))
    c.optim.decay_steps = steps
    c.checkpoint_every = max(1, min(c.checkpoint_every, steps))


def demo_opts(cfg: AblationConfig, *extra: str | None) -> str:
    return ",".join(o for o in ("size=tiny" if cfg.tiny else "size=demo", *extra) if o)


def teacher_run_config(cfg: AblationConfig):
    c = recipes.teacher_config(demo_opts(cfg))
    _budget(c, cfg.teacher_steps)
    # At 3000 steps this is exactly the bundled demo teacher's recipe (experiments/teacher.py:demo).
    c.optim.warmup_steps = max(1, min(100, cfg.teacher_steps // 15))
    return c


def arm_config(cfg: AblationConfig, arm: str, depth: int, seed: int, teacher_dir: pathlib.Path):
    c = recipes.distill_config(depth, demo_opts(cfg, ARMS[arm][0]))
    c.model = json.loads((teacher_dir / "model_config.json").read_text())
    recipes.match_data_to_model(c.data, c.model)  # the inputs the teacher was trained on
    c.teacher.params = str(teacher_dir / "params")
    c.data.norm_stats_path = str(teacher_dir / "assets" / "norm_stats.json")
    c.seed = seed
    c.data.seed = seed
    _budget(c, cfg.steps)
    apply_overrides(c, cfg.overrides)
    return c


# ---------------------------------------------------------------------------------------- the run

def result_path(out: pathlib.Path, depth: int | None, arm: str, seed: int) -> pathlib.Path:
    name = "teacher" if depth is None else f"L{depth}_{arm}_s{seed}"
    return out / "results" / f"{name}.json"


def work_units(cfg: AblationConfig) -> list[tuple[int, str, int]]:
    units = []
    for depth in cfg.depths:
        for arm in cfg.arms:
            # The untrained student is deterministic: one evaluation, not one per seed.
            for seed in (cfg.seeds[:1] if arm == "untrained" else cfg.seeds):
                units.append((depth, arm, seed))
    return units


def demo_policy(checkpoint_dir: pathlib.Path):

    return load_policy(checkpoint_dir, env="demo", num_steps=10)


def untrained_policy(teacher_dir: pathlib.Path, depth: int):

    ckpt = load_checkpoint(teacher_dir)
    lmap = make_layer_map(ckpt.config.depth, depth)
    params = student_params(ckpt.params, lmap)
    cfg = ckpt.config.with_depth(depth)
    dc = serving_data_config(cfg, get_preset("demo"), tokenizer_path=demo_tokenizer_path(),
                             norm_stats_path=ckpt.norm_stats)
    return Policy(cfg, params, input_transform=transforms.make_input_transform(dc),
                  output_transform=transforms.make_output_transform(dc), num_steps=10,
                  metadata={"layer_map": lmap.to_dict()})


def _evaluate(cfg: AblationConfig, policy, label: str, log) -> dict:
    def progress(done, total):
        log(f"  eval {label}: {done}/{total} episodes")

    r = evaluate(policy, cfg.eval_seeds, replan_every=cfg.replan_every, num_envs=cfg.num_envs, progress=progress)
    r["latency_ms"] = measure_latency(policy, cfg.latency_reps)
    return r


def evaluate_policy_dir(cfg: AblationConfig, path: pathlib.Path, log=print) -> dict:
    """One trained policy (e.g. the main job's student) closed loop, exactly as the ablation evaluates its arms."""
    policy = demo_policy(path)
    r = _evaluate(cfg, policy, str(path), log)
    r.update(policy=str(path), depth=policy.config.depth, layer_map=(policy.metadata or {}).get("layer_map"),
             eval_seed=cfg.eval_seed)
    return r


def measure_latency(policy, reps: int) -> dict:
    """Batch-1 sample_actions time (ms) after warm-up; median and p90 over `reps` calls."""

    obs = warmup_observation(policy)
    noise = np.zeros((1, policy.config.action_horizon, policy.config.action_dim), np.float32)
    policy.sample(obs, noise)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        policy.sample(obs, noise)
        times.append(1000 * (time.perf_counter() - t0))
    return {"median": float(np.median(times)), "p90": float(np.percentile(times, 90)), "reps": reps,
            "batch": 1, "depth": policy.config.depth}


def ensure_teacher(cfg: AblationConfig, out: pathlib.Path, log) -> pathlib.Path:
    """The teacher checkpoint dir: --teacher as given, else trained (resumably) under out/teacher."""

    if cfg.teacher:
        d = pathlib.Path(cfg.teacher)
        d = d.parent if d.name == "params" else d
        for need in ("params", "model_config.json", "assets/norm_stats.json"):
            if not (d / need).exists():
                raise ValueError(f"teacher: {d} has no {need} (expected a trainer-exported checkpoint dir)")
        return d
    run_dir = out / "teacher"
    done = run_dir / "DONE"
    if not done.exists():
        if cfg.teacher_steps == 0:
            log(f"writing a random-init teacher to {run_dir} (teacher_steps=0: smoke test only)")
            random_teacher(teacher_run_config(cfg), run_dir / "student")
        else:
            log(f"training the teacher ({cfg.teacher_steps} steps) in {run_dir}")
            loop.run(demo.prepare(run_plan.resolve(teacher_run_config(cfg))), run_dir)
        done.write_text("ok\n")
    return run_dir / "student"


def random_teacher(c, out_dir: pathlib.Path) -> None:
    """An untrained full-depth model exported like a trained one (params/, model_config.json, assets/)."""


    # Derived, not resolved: its budget is 0 steps (teacher_steps=0), which a config to train is refused for.
    plan = demo.prepare(run_plan.derive(c))
    params = jax.device_get(init_params(plan.model, jax.random.PRNGKey(plan.seed)))
    if out_dir.exists():  # a half-written one from an interrupted call
        shutil.rmtree(out_dir)
    export_student(params, out_dir, plan.model, None, plan.data.norm_stats_path, None)


def run(cfg: AblationConfig, log: Callable[[str], None] = print, progress: bool = True) -> None:
    """Train and evaluate everything not done yet under cfg.out (report.report(cfg.out) tabulates them)."""
    out = pathlib.Path(cfg.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ablation_config.json", dataclasses.asdict(cfg))
    teacher_dir = ensure_teacher(cfg, out, log)
    units = [(None, "teacher", 0)] + work_units(cfg)
    todo = [u for u in units if not result_path(out, *u).exists()]
    log(f"{len(units) - len(todo)}/{len(units)} results already done; {len(todo)} to run")
    bar = tqdm(total=len(units), initial=len(units) - len(todo), desc="ablation", unit="run",
               disable=not progress, dynamic_ncols=True)
    try:
        for depth, arm, seed in todo:
            label = "teacher" if depth is None else f"L{depth} {arm} seed {seed}"
            bar.set_postfix_str(label)
            t0 = time.time()
            if depth is None:
                policy, extra = demo_policy(teacher_dir), {}
            elif arm == "untrained":
                policy, extra = untrained_policy(teacher_dir, depth), {"train_steps": 0}
            else:
                wd = out / "runs" / f"L{depth}_{arm}_s{seed}"
                log(f"training {label} ({cfg.steps} steps) in {wd}")
                plan = demo.prepare(run_plan.resolve(arm_config(cfg, arm, depth, seed, teacher_dir)))
                metrics, _ = loop.run(plan, wd, progress=progress)
                policy = demo_policy(wd / "student")
                extra = {"train_steps": cfg.steps, "final_train_metrics": metrics, "train_seconds": time.time() - t0}
                if not cfg.keep_checkpoints:
                    shutil.rmtree(wd / "checkpoints", ignore_errors=True)
            r = _evaluate(cfg, policy, label, log)
            # the maps the student really started from (both stacks), as its layer_map.json says
            r.update(extra, arm=arm, depth=policy.config.depth, seed=seed, seconds_total=time.time() - t0,
                     layer_map=(policy.metadata or {}).get("layer_map"))
            write_json(result_path(out, depth, arm, seed), r)
            log(f"{label}: success {r['success_rate']:.1%} (95% CI {r['ci95'][0]:.1%}–{r['ci95'][1]:.1%}), "
                f"latency {r['latency_ms']['median']:.1f} ms")
            bar.update(1)
    finally:
        bar.close()
