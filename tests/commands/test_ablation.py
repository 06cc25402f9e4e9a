"""The ablation: arms map to the intended losses/inits/maps, pooled CIs, paired differences to `full`
(bootstrap and exact McNemar), and `--quick` end to end + resume."""
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from shallow_pi_jax.ablation import paired, report
from shallow_pi_jax.ablation import run as ablation
from shallow_pi_jax.eval.closed_loop import wilson_interval
from shallow_pi_jax.training.recipes import demo_model

REPO = pathlib.Path(__file__).parents[2]


@pytest.fixture()
def teacher_dir(tmp_path):
    d = tmp_path / "teacher"
    d.mkdir()
    (d / "model_config.json").write_text(json.dumps(demo_model(depth=18).to_dict()))
    return d


def test_arms_set_the_intended_losses_layers_and_init(teacher_dir, tmp_path):
    cfg = ablation.AblationConfig(out=str(tmp_path), steps=60, overrides=("batch_size=4", "loss.task=2.0"))
    expect = {  # arm: (velocity_kd, attention_kd, attn_layer, attn_queries, init, layer_map, expert_map)
        "task_only": (0, 0, "middle", "action", "teacher", "uniform", "same"),
        "kd": (1, 0, "middle", "action", "teacher", "uniform", "same"),
        "full": (1, 1, "middle", "action", "teacher", "uniform", "same"),
        "attn_initial": (1, 1, "initial", "action", "teacher", "uniform", "same"),
        "attn_late": (1, 1, "late", "action", "teacher", "uniform", "same"),
        "attn_all": (1, 1, "middle", "all", "teacher", "uniform", "same"),
        "scratch": (0, 0, "middle", "action", "scratch", "uniform", "same"),
        "first": (1, 1, "middle", "action", "teacher", "first", "same"),
        "published": (1, 1, "middle", "action", "teacher", "first", "uniform"),
    }
    assert set(expect) | {"untrained"} == set(ablation.ARMS)
    for arm, (vkd, akd, layer, queries, init, lmap, emap) in expect.items():
        c = ablation.arm_config(cfg, arm, 6, seed=2, teacher_dir=teacher_dir)
        got = (c.loss.velocity_kd, c.loss.attention_kd, c.loss.attn_layer, c.loss.attn_queries, c.student.init,
               c.student.layer_map, c.student.expert_map)
        assert got == (vkd, akd, layer, queries, init, lmap, emap), arm
        # same budget for every arm; overrides applied; the teacher's own sizes and stats
        assert (c.num_steps, c.optim.decay_steps, c.optim.warmup_steps) == (60, 60, 4)
        assert (c.batch_size, c.loss.task, c.seed, c.data.seed, c.student.depth) == (4, 2.0, 2, 2, 6)
        assert c.teacher.params == str(teacher_dir / "params")
        assert c.data.norm_stats_path == str(teacher_dir / "assets" / "norm_stats.json")
        assert c.model["llm"]["depth"] == 18
    assert c.data.pi05 is True
    pi0 = teacher_dir.parent / "pi0_teacher"
    pi0.mkdir()
    (pi0 / "model_config.json").write_text(json.dumps(demo_model(pi05=False, depth=18).to_dict()))
    c = ablation.arm_config(cfg, "full", 6, seed=0, teacher_dir=pi0)  # a π0 teacher: π0 data transforms
    assert c.data.pi05 is False and c.model["pi05"] is False and c.data.horizon == c.model["action_horizon"]
    with pytest.raises(ValueError, match="no field 'loss.nope'"):
        ablation.arm_config(ablation.AblationConfig(out=str(tmp_path), overrides=("loss.nope=1",)), "kd", 6, 0,
                            teacher_dir)
    with pytest.raises(ValueError, match="arms: unknown"):
        ablation.AblationConfig(out=str(tmp_path), arms=("full", "bogus"))
    units = ablation.work_units(ablation.AblationConfig(out="x", arms=("kd", "untrained"), seeds=(0, 1), depths=(6, 4)))
    assert units == [(6, "kd", 0), (6, "kd", 1), (6, "untrained", 0), (4, "kd", 0), (4, "kd", 1), (4, "untrained", 0)]


def fake_result(depth, arm, seed, successes, episodes=40):
    return {"depth": depth, "arm": arm, "seed": seed, "successes": successes, "episodes": episodes,
            "success_rate": successes / episodes, "wrong_object": 0.1, "timeouts": 0.2,
            "latency_ms": {"median": 10.0 + seed}, "train_steps": 5}


def test_summary_pools_seeds_with_a_wilson_interval_and_writes_the_report(tmp_path):
    (tmp_path / "results").mkdir()
    for i, r in enumerate([fake_result(6, "full", 0, 30), fake_result(6, "full", 1, 20),
                           fake_result(18, "teacher", 0, 35), fake_result(6, "kd", 0, 10)]):
        (tmp_path / "results" / f"{i}.json").write_text(json.dumps(r))
    obj = report.report(tmp_path)
    rows = {(r["depth"], r["arm"]): r for r in obj["rows"]}
    assert [(r["depth"], r["arm"]) for r in obj["rows"]] == [(18, "teacher"), (6, "kd"), (6, "full")]
    full = rows[(6, "full")]
    assert (full["successes"], full["episodes"], full["seeds"]) == (50, 80, [0, 1])
    assert full["ci95"] == list(wilson_interval(50, 80))
    assert full["seed_std"] == pytest.approx(0.17677669, abs=1e-6)  # std of (0.75, 0.5), ddof 1
    assert full["paper"] == 94.6 and rows[(18, "teacher")]["paper"] is None
    md = (tmp_path / "results.md").read_text()
    assert "| L6 | full |" in md and "62.5 (" in md and "94.6" in md
    assert (tmp_path / "results.png").stat().st_size > 1000
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == json.loads(json.dumps(obj["rows"]))


def test_mcnemar_exact_p_values():
    # p = 2·P[Binomial(b + c, 1/2) <= min(b, c)], capped at 1
    assert paired.mcnemar_exact(0, 10) == pytest.approx(2 / 2 ** 10, rel=1e-12)
    assert paired.mcnemar_exact(3, 12) == pytest.approx(2 * (1 + 15 + 105 + 455) / 2 ** 15, rel=1e-12)
    assert paired.mcnemar_exact(12, 3) == paired.mcnemar_exact(3, 12)
    assert paired.mcnemar_exact(1, 5) == pytest.approx(2 * 7 / 64, rel=1e-12)  # 0.21875, not the χ² 0.10
    assert paired.mcnemar_exact(5, 5) == 1.0 and paired.mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError, match="non-negative integer"):
        paired.mcnemar_exact(-1, 3)


def test_paired_bootstrap_sees_a_difference_two_wilson_intervals_miss():
    # One seed each, same 200 episodes: the arm fails 12 episodes `ref` solves and is otherwise identical.
    ref = np.zeros(200)
    ref[:170] = 1
    arm = ref.copy()
    arm[:12] = 0
    r = paired.paired_bootstrap(arm[None], ref[None], reps=4000, seed=1)
    assert r["diff"] == pytest.approx(-0.06, abs=1e-12)
    # resampling episodes flips Binomial(200, 0.06) of them: sd √(.06·.94/200) = 0.0168
    assert r["ci"][0] == pytest.approx(-0.06 - 1.96 * 0.0168, abs=0.008)
    assert r["ci"][1] == pytest.approx(-0.06 + 1.96 * 0.0168, abs=0.008)
    assert r["ci"][1] < 0  # paired: a real difference
    lo_a, hi_a = wilson_interval(158, 200)
    lo_r, hi_r = wilson_interval(170, 200)
    assert lo_r < hi_a  # unpaired, the two intervals overlap
    with pytest.raises(ValueError, match="share their episodes"):
        paired.paired_bootstrap(arm[None, :100], ref[None])
    with pytest.raises(ValueError, match="0/1 outcomes"):
        paired.paired_bootstrap(arm[None] * 0.5, ref[None])


def test_paired_bootstrap_covers_the_true_difference_with_seed_variance():
    rng = np.random.default_rng(7)
    hits, n = 0, 60
    for k in range(n):
        p = rng.uniform(0.6, 0.9, 200)  # per-episode difficulty, shared by both arms (the pairing)
        ref = rng.random((5, 200)) < p + rng.normal(0, 0.03, (5, 1))  # 5 training seeds, each its own offset
        arm = rng.random((5, 200)) < p - 0.05 + rng.normal(0, 0.03, (5, 1))
        ci = paired.paired_bootstrap(arm, ref, reps=500, seed=k)["ci"]
        hits += ci[0] <= -0.05 <= ci[1]
    assert hits >= 0.9 * n


def _with_episodes(r, outcomes, first_seed=100_000):
    return {**r, "successes": int(sum(outcomes)), "episodes": len(outcomes), "success_rate": float(np.mean(outcomes)),
            "per_episode": [{"seed": first_seed + i, "success": bool(o), "touched": 0, "steps": 5}
                            for i, o in enumerate(outcomes)]}


def test_report_pairs_each_arm_with_full_and_marks_results_without_episodes(tmp_path):
    (tmp_path / "results").mkdir()
    full = [1] * 30 + [0] * 10
    runs = [_with_episodes(fake_result(6, "full", s, 0), full) for s in (0, 1)]
    runs += [_with_episodes(fake_result(6, "first", s, 0), [1] * 40) for s in (0, 1)]  # +10 episodes each
    runs += [_with_episodes(fake_result(6, "kd", 0, 0), full[:-1] + [1])]  # one episode better
    runs += [fake_result(6, "task_only", 0, 20)]  # an old result: no per-episode outcomes
    runs[0]["layer_map"] = runs[1]["layer_map"] = {"indices": [0, 3], "expert_indices": [0, 3]}
    runs[2]["layer_map"] = runs[3]["layer_map"] = {"indices": [0, 1], "expert_indices": [0, 3]}
    for i, r in enumerate(runs):
        (tmp_path / "results" / f"{i}.json").write_text(json.dumps(r))
    rows = {r["arm"]: r for r in report.report(tmp_path)["rows"]}
    first = rows["first"]["vs_full"]
    assert first["diff"] == pytest.approx(0.25) and first["real"] and first["ci95"][0] > 0
    assert first["discordant"] == [20, 0] and first["matched_seeds"] == [0, 1]
    assert first["mcnemar_p"] == pytest.approx(2 / 2 ** 20)
    kd = rows["kd"]["vs_full"]
    assert kd["diff"] == pytest.approx(0.025) and not kd["real"] and kd["mcnemar_p"] == 1.0
    assert rows["full"]["vs_full"] is None and rows["task_only"]["vs_full"] is None
    assert rows["first"]["layer_map"] == {"backbone": [0, 1], "expert": [0, 3]}
    md = (tmp_path / "results.md").read_text()
    assert "| 0,1 / 0,3 |" in md and "| 0,3 (both) |" in md
    assert "**+25.0 (" in md and "n/a: no per-episode outcomes" in md and "| reference |" in md


@pytest.mark.slow
def test_quick_ablation_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "abl"
    env = dict(os.environ)  # the session's SHALLOW_PI_CACHE (conftest): the demo dataset other tests use too
    cmd = [sys.executable, "-m", "shallow_pi_jax.ablation", "--quick", "--out", str(out), "--no-progress"]
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    first = time.time() - t0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["depth"], r["arm"]) for r in rows] == [(18, "teacher"), (6, "full"), (6, "untrained")]
    for r in rows:
        assert r["episodes"] == 20 and 0 <= r["successes"] <= 20 and r["latency_ms"] > 0
        assert r["ci95"][0] <= r["success_rate"] <= r["ci95"][1]
    for name in ("teacher", "L6_untrained_s0", "L6_full_s0"):
        res = json.loads((out / "results" / f"{name}.json").read_text())
        assert [e["seed"] for e in res["per_episode"]] == list(range(100_000, 100_020))
    full = json.loads((out / "results" / "L6_full_s0.json").read_text())
    assert full["train_steps"] == 10 and full["final_train_metrics"]["loss/attention_kd"] > 0
    untrained = json.loads((out / "results" / "L6_untrained_s0.json").read_text())
    assert untrained["train_steps"] == 0 and untrained["depth"] == 6 and not (out / "runs" / "L6_untrained_s0").exists()
    assert json.loads((out / "runs" / "L6_full_s0" / "student" / "layer_map.json").read_text())["indices"] == \
        [0, 3, 7, 10, 14, 17]
    assert not (out / "runs" / "L6_full_s0" / "checkpoints").exists()
    assert "| L6 | full |" in p.stdout and (out / "results.png").exists()

    # Resume: everything is done, so nothing is trained or evaluated again.
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=200)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "3/3 results already done; 0 to run" in p.stdout
    assert time.time() - t0 < first / 2

    # --evaluate (the README's command for the main job's number) on a student gives the arm's own result:
    # same protocol, same episodes, same per-episode outcomes.
    student = out / "runs" / "L6_full_s0" / "student"
    p = subprocess.run([*cmd[:4], "--evaluate", str(student), "--out", str(tmp_path / "one")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "closed_loop.json").read_text())
    assert one["per_episode"] == full["per_episode"] and one["successes"] == full["successes"]
    assert f"({full['successes']}/20 episodes, reset seeds 100000–100019;" in p.stdout
