"""The ablation's report: seeds pooled per arm, Wilson intervals, a markdown table and a bar chart."""
from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from shallow_pi_jax import fileio
from shallow_pi_jax.ablation.run import ARMS, PAPER, write_json
from shallow_pi_jax.eval.closed_loop import wilson_interval

matplotlib.use("Agg")


def load_results(out: pathlib.Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]


def summarise(results: Sequence[dict]) -> list[dict]:
    """Pool the seeds of each (depth, arm): Wilson CI over all their episodes, plus per-seed spread."""
    groups: dict[tuple[int, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["depth"], r["arm"]), []).append(r)
    rows = []
    for (depth, arm), rs in groups.items():
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
        })
    order = {a: i for i, a in enumerate(["teacher", *ARMS])}
    rows.sort(key=lambda r: (-r["depth"] if r["arm"] == "teacher" else r["depth"], order.get(r["arm"], 99)))
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    lines = ["| depth | arm | what | success % (95 % CI) | seeds | episodes | seed std | wrong goal % | timeout % "
             "| latency ms (b=1) | paper LIBERO % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        what = "the teacher" if r["arm"] == "teacher" else ARMS[r["arm"]][1]
        std = "—" if r["seed_std"] is None else f"{100 * r['seed_std']:.1f}"
        paper = "—" if r["paper"] is None else f"{r['paper']:.1f}"
        lines.append(
            f"| L{r['depth']} | {r['arm']} | {what} | {100 * r['success_rate']:.1f} "
            f"({100 * r['ci95'][0]:.1f}–{100 * r['ci95'][1]:.1f}) | {len(r['seeds'])} | {r['episodes']} | {std} "
            f"| {100 * r['wrong_object']:.1f} | {100 * r['timeouts']:.1f} | {r['latency_ms']:.1f} | {paper} |")
    return "\n".join(lines) + "\n"


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
