r"""Does distillation work? The Shallow-π ablation, closed loop, on the bundled ReachEnv simulator.

Trains the 18-layer teacher (or takes --teacher), then for each student depth, arm and seed
trains a student with the same budget and evaluates it closed loop on the same evaluation
episodes (reset seeds --eval-seed.. , never used in training). Writes, under --out:
results/<run>.json (one per arm/seed; a finished one is never redone), results.json, results.md
(table with 95 % Wilson CIs next to the paper's LIBERO numbers) and results.png.

    python -m shallow_pi_jax.ablation --quick --out /tmp/ablation_quick      # a few minutes: smoke test
    python -m shallow_pi_jax.ablation --out runs/ablation                     # every arm, L6, 3 seeds (hours)
    python -m shallow_pi_jax.ablation --out runs/ablation --teacher shallow_pi_jax/assets/demo_teacher \
        --arms task_only,kd,full --depths 6,4,9 --steps 200 --seeds 0,1 --episodes 200
    python -m shallow_pi_jax.ablation --out runs/ablation --report-only       # re-make the table and chart
    python -m shallow_pi_jax.ablation --evaluate /tmp/shallow_pi_demo --out /tmp/eval_demo   # one policy, same protocol

Re-running the same command resumes. Extra `--config.x.y=value` arguments override every student's
training config (e.g. --config.batch_size=32). Arms: task_only, kd, full, attn_initial, attn_late,
attn_all, scratch, untrained (uniform map, no training), first (first L layers of both stacks),
published (backbone first L, expert uniform: the published reference code's map).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from shallow_pi_jax import cli, verbosity
from shallow_pi_jax.ablation.config import ARMS, DEFAULT_ARMS, AblationConfig

QUICK = dict(arms="untrained,full", depths="6", seeds="0", steps=10, teacher_steps=0, episodes=20, num_envs=20,
             latency_reps=5)


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (resumable)")
    p.add_argument("--quick", action="store_true",
                   help="smoke budget: tiny 32 px model, random-init teacher, arms untrained,full × 1 seed × "
                        "10 steps, 20 episodes (explicit options still win)")
    p.add_argument("--arms", default=None, help=f"comma-separated arms (default: all of {','.join(ARMS)})")
    p.add_argument("--depths", default=None, help="student depths (default: 6)")
    p.add_argument("--seeds", default=None, help="training seeds (default: 0,1,2)")
    p.add_argument("--steps", type=int, default=None, help="training steps per arm (default: 300)")
    p.add_argument("--teacher", default="", help="teacher checkpoint dir (params/, model_config.json, "
                   "assets/norm_stats.json), or the training run that wrote it; default: train one under --out")
    p.add_argument("--teacher-steps", type=int, default=None,
                   help="steps when training the teacher (default: 3000, the bundled teacher's recipe, "
                        "~25 min on 2 cores; 0 = random init, for smoke tests)")
    p.add_argument("--episodes", type=int, default=None, help="evaluation episodes per model (default: 200)")
    p.add_argument("--eval-seed", type=int, default=100_000, help="first evaluation reset seed (default: 100000)")
    p.add_argument("--replan-every", type=int, default=5, help="actions executed per chunk (default: 5)")
    p.add_argument("--num-envs", type=int, default=None, help="episodes stepped in lockstep (default: 50)")
    p.add_argument("--latency-reps", type=int, default=None, help="timed batch-1 calls per model (default: 20)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep training checkpoints (default: delete "
                   "them once a student is exported and evaluated)")
    p.add_argument("--report-only", action="store_true", help="only rebuild results.{json,md,png} from results/")
    p.add_argument("--evaluate", metavar="DIR", default=None,
                   help="only evaluate this policy directory (a training run, a student directory) closed loop with "
                        "the ablation's protocol (--episodes, --eval-seed, --replan-every, --num-envs, 10 Euler "
                        "steps) and write OUT/closed_loop.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    cli.add_verbose(p)
    args, rest = p.parse_known_args(argv)
    verbosity.configure(args.verbose)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            p.error(f"unrecognized argument {item!r} (config overrides look like --config.batch_size=32)")
        overrides.append(item[len("--config."):])
    return args, tuple(overrides)


def build_config(args, overrides) -> AblationConfig:
    q = QUICK if args.quick else {}

    def pick(name, default):
        v = getattr(args, name)
        return v if v is not None else q.get(name, default)

    d = AblationConfig  # the defaults live there, once
    arms = pick("arms", ",".join(DEFAULT_ARMS))
    return AblationConfig(
        out=args.out, arms=tuple(a.strip() for a in arms.split(",") if a.strip()),
        depths=_ints(pick("depths", "6")), seeds=_ints(pick("seeds", "0,1,2")), steps=pick("steps", d.steps),
        teacher=str(cli.policy_path(args.teacher)) if args.teacher else "",
        teacher_steps=pick("teacher_steps", d.teacher_steps),
        episodes=pick("episodes", d.episodes),
        eval_seed=args.eval_seed, replan_every=args.replan_every, num_envs=pick("num_envs", d.num_envs),
        tiny=args.quick, overrides=overrides, latency_reps=pick("latency_reps", d.latency_reps),
        keep_checkpoints=args.keep_checkpoints)


def main(argv=None) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    # Imported once the flags are parsed, so that --help answers without loading JAX or TensorFlow.
    from shallow_pi_jax.ablation import report, run

    if args.evaluate:
        cfg = build_config(args, overrides)
        r = run.evaluate_policy_dir(cfg, cli.policy_path(args.evaluate), print)
        pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
        run.write_json(pathlib.Path(args.out) / "closed_loop.json", r)
        print(f"closed loop: {100 * r['success_rate']:.1f} % success ({r['successes']}/{r['episodes']} episodes, "
              f"reset seeds {cfg.eval_seed}–{cfg.eval_seed + cfg.episodes - 1}; 95 % CI "
              f"{100 * r['ci95'][0]:.1f}–{100 * r['ci95'][1]:.1f}), wrong goal {100 * r['wrong_object']:.1f} %, "
              f"timeouts {100 * r['timeouts']:.1f} %")
        print(f"wrote {args.out}/closed_loop.json")
        return 0
    if args.report_only:
        obj = report.report(args.out)
    else:
        cfg = build_config(args, overrides)
        if cfg.teacher:
            run.ensure_teacher(cfg, pathlib.Path(cfg.out), print)  # checked before --out is created
        run.run(cfg, progress=not args.no_progress)
        obj = report.report(cfg.out)
    print(report.markdown_table(obj["rows"]), end="")
    print(f"wrote {args.out}/results.json, results.md, results.png")
    return 0


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
