"""The ablation's report: seeds pooled per arm, Wilson intervals, each arm's paired difference to `full`
(same evaluation episodes; ablation/paired.py), a markdown table and a bar chart."""
from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from shallow_pi_jax import fileio
from shallow_pi_jax.ablation import paired
from shallow_pi_jax.ablation.config import ARMS, PAPER
from shallow_pi_jax.ablation.run import write_json
from shallow_pi_jax.eval.closed_loop import wilson_interval

matplotlib.use("Agg")


def load_results(out: pathlib.Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]


REFERENCE = "full"  # every arm is compared with the Shallow-π recipe at its own depth


def outcomes(rs: Sequence[dict]) -> tuple[np.ndarray, list[int]] | None:
    """[seeds, episodes] 0/1 successes of one arm's runs (sorted by training seed) and their episode
    seeds; None when a run has no per-episode outcomes (results written before they were stored) or
    the runs did not see the same episodes."""
    if any("per_episode" not in r for r in rs):
        return None
    rs = sorted(rs, key=lambda r: r["seed"])
    eps = [[int(e["seed"]) for e in r["per_episode"]] for r in rs]
    if any(e != eps[0] for e in eps):
        return None
    return np.array([[bool(e["success"]) for e in r["per_episode"]] for r in rs], np.float64), eps[0]


def compare(arm_runs: Sequence[dict], ref_runs: Sequence[dict]) -> dict | None:
    """The paired difference arm − reference on their shared episodes; None if it cannot be paired."""
    a, r = outcomes(arm_runs), outcomes(ref_runs)
    if a is None or r is None or a[1] != r[1]:
        return None
    boot = paired.paired_bootstrap(a[0], r[0])
    # McNemar on seed-matched runs (arm seed s against reference seed s), pooled over the shared seeds.
    arm_by_seed = {x["seed"]: x for x in arm_runs}
    shared = sorted(set(arm_by_seed) & {x["seed"] for x in ref_runs})
    b = c = 0
    for x in ref_runs:
        if x["seed"] in shared:
            sa = np.array([e["success"] for e in arm_by_seed[x["seed"]]["per_episode"]], bool)
            sr = np.array([e["success"] for e in x["per_episode"]], bool)
            b, c = b + int(np.sum(sa & ~sr)), c + int(np.sum(~sa & sr))
    return {"diff": boot["diff"], "ci95": boot["ci"], "real": not boot["ci"][0] <= 0 <= boot["ci"][1],
            "mcnemar_p": paired.mcnemar_exact(b, c) if shared else None, "discordant": [b, c],
            "matched_seeds": shared, "episodes": len(a[1])}


def _layer_map(rs: Sequence[dict]):
    """The maps (backbone, expert) all runs of an arm started from, if they recorded them and agree."""
    maps = {(tuple(m["indices"]), tuple(m.get("expert_indices", m["indices"])))
            for m in (r.get("layer_map") for r in rs) if m}
    return {"backbone": list(next(iter(maps))[0]), "expert": list(next(iter(maps))[1])} if len(maps) == 1 else None


def summarise(results: Sequence[dict]) -> list[dict]:
    """Pool the seeds of each (depth, arm): Wilson CI over all their episodes, plus per-seed spread,
    and the paired difference to `full` at the same depth."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["depth"], r["arm"]), []).append(r)
    rows = []
    for (depth, arm), rs in groups.items():
        ref = groups.get((depth, REFERENCE))
        succ, n = sum(r["successes"] for r in rs), sum(r["episodes"] for r in rs)
        rates = [r["success_rate"] for r in rs]
        rows.append({
            "depth": depth, "arm": arm, "seeds": sorted(r["seed"] for r in rs), "episodes": n, "successes": succ,
            "success_rate": succ / n, "ci95": list(wilson_interval(succ, n)),
            "seed_std": float(np.std(rates, ddof=1)) if len(rates) > 1 else None,
            "wrong_object": float(np.mean([r["wrong_object"] for r in rs])),
            "timeouts": float(np.mean([r["timeouts"] for r in rs])),
            "latency_ms": float(np.median([r["latency_ms"]["median"] for r in rs])),
            "train_steps": rs[0].get("train_steps"),
            "paper": PAPER.get(depth, {}).get(arm),
            "layer_map": _layer_map(rs),
            "per_episode": outcomes(rs) is not None,
            "vs_full": compare(rs, ref) if ref and arm not in (REFERENCE, "teacher") else None,
        })
    order = {a: i for i, a in enumerate(["teacher", *ARMS])}
    rows.sort(key=lambda r: (-r["depth"] if r["arm"] == "teacher" else r["depth"], order.get(r["arm"], 99)))
    return rows


def _map_cell(r: dict) -> str:
    if r["arm"] == "scratch":
        return "— (random init)"
    m = r.get("layer_map")
    if not m:
        return "—"
    fmt = ",".join
    if m["backbone"] == m["expert"]:
        return f"{fmt(map(str, m['backbone']))} (both)"
    return f"{fmt(map(str, m['backbone']))} / {fmt(map(str, m['expert']))}"


def _diff_cell(r: dict) -> tuple[str, str]:
    if r["arm"] == REFERENCE:
        return "reference", "—"
    v = r.get("vs_full")
    if v is None:
        why = "—" if r["arm"] == "teacher" else ("n/a: no per-episode outcomes" if not r.get("per_episode")
                                                  else "n/a: no paired full run")
        return why, "—"
    cell = f"{100 * v['diff']:+.1f} ({100 * v['ci95'][0]:+.1f} to {100 * v['ci95'][1]:+.1f})"
    p = "—" if v["mcnemar_p"] is None else (f"{v['mcnemar_p']:.2g}" if v["mcnemar_p"] >= 1e-4 else "<1e-4")
    return (f"**{cell}**" if v["real"] else cell), p


def markdown_table(rows: Sequence[dict]) -> str:
    lines = ["| depth | arm | what | map: backbone / expert | success % (95 % CI) "
             "| Δ vs full, points (95 % paired CI) | McNemar p | seeds | episodes | seed std | wrong goal % "
             "| timeout % | latency ms (b=1) | paper LIBERO % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        what = "the teacher" if r["arm"] == "teacher" else ARMS[r["arm"]][1]
        std = "—" if r["seed_std"] is None else f"{100 * r['seed_std']:.1f}"
        paper = "—" if r["paper"] is None else f"{r['paper']:.1f}"
        diff, p = _diff_cell(r)
        lines.append(
            f"| L{r['depth']} | {r['arm']} | {what} | {_map_cell(r)} | {100 * r['success_rate']:.1f} "
            f"({100 * r['ci95'][0]:.1f}–{100 * r['ci95'][1]:.1f}) | {diff} | {p} | {len(r['seeds'])} | {r['episodes']} "
            f"| {std} | {100 * r['wrong_object']:.1f} | {100 * r['timeouts']:.1f} | {r['latency_ms']:.1f} | {paper} |")
    return "\n".join(lines) + "\n" + FOOTNOTE


FOOTNOTE = ("\nΔ vs full: the arm's success rate minus `full`'s at the same depth, on the same evaluation episodes; "
            "95 % interval of a paired bootstrap that resamples the episodes (one draw for both arms) and each "
            "arm's training seeds (10 000 replicates). **Bold**: the interval excludes 0. McNemar p: two-sided "
            "exact test on seed-matched runs (seed s against full's seed s), discordant episodes only. Paper: "
            "Shallow-π (arXiv 2601.20262), LIBERO average, second-hand (docs/ablation.md).\n")


def plot(rows: Sequence[dict], path: pathlib.Path) -> None:
    labels = [f"L{r['depth']} {r['arm']}" for r in rows]
    rate = np.array([100 * r["success_rate"] for r in rows])
    lo = rate - np.array([100 * r["ci95"][0] for r in rows])
    hi = np.array([100 * r["ci95"][1] for r in rows]) - rate
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows) + 2), 4))
    x = np.arange(len(rows))
    ax.bar(x, rate, yerr=[lo, hi], capsize=3, color=["#777" if r["arm"] == "teacher" else "#4a7ab5" for r in rows])
    paper = [(i, r["paper"]) for i, r in enumerate(rows) if r["paper"] is not None]
    if paper:
        ax.scatter([i for i, _ in paper], [p for _, p in paper], marker="_", s=300, color="#c33", zorder=3,
                   label="paper (LIBERO)")
        ax.legend(loc="lower right")
    ax.set_xticks(x, labels, rotation=45, ha="right")
    ax.set_ylabel("closed-loop success % (95 % Wilson CI)")
    ax.set_ylim(0, 100)
    ax.set_title("Shallow-π ablation on the ReachEnv simulator")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def report(out) -> dict:
    """Write out/results.{json,md,png} from whatever results exist; returns the JSON object."""
    out = pathlib.Path(out)
    rows = summarise(load_results(out))
    cfg_file = out / "ablation_config.json"
    obj = {"config": json.loads(cfg_file.read_text()) if cfg_file.exists() else None, "rows": rows}
    write_json(out / "results.json", obj)
    fileio.write_text(out / "results.md", markdown_table(rows))
    if rows:
        plot(rows, out / "results.png")
    return obj
