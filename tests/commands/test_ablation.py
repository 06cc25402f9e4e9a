"""The ablation: arms map to the intended losses/inits, pooled CIs, and `--quick` end to end + resume."""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import pytest

from shallow_pi_jax.ablation import report
from shallow_pi_jax.ablation import run as ablation
from shallow_pi_jax.eval.closed_loop import wilson_interval
from shallow_pi_jax.training.config import demo_model

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).parents[2]


@pytest.fixture()
def teacher_dir(tmp_path):
    d = tmp_path / "teacher"
    d.mkdir()
    (d / "model_config.json").write_text(json.dumps(demo_model(depth=18).to_dict()))
    return d


def test_arms_set_the_intended_losses_layers_and_init(teacher_dir, tmp_path):
    cfg = ablation.AblationConfig(out=str(tmp_path), steps=60, overrides=("batch_size=4", "loss.task=2.0"))
    expect = {  # arm: (velocity_kd, attention_kd, attn_layer, attn_queries, init, layer_map)
        "task_only": (0, 0, "middle", "action", "teacher", "uniform"),
        "kd": (1, 0, "middle", "action", "teacher", "uniform"),
        "full": (1, 1, "middle", "action", "teacher", "uniform"),
        "attn_initial": (1, 1, "initial", "action", "teacher", "uniform"),
        "attn_late": (1, 1, "late", "action", "teacher", "uniform"),
        "attn_all": (1, 1, "middle", "all", "teacher", "uniform"),
        "scratch": (0, 0, "middle", "action", "scratch", "uniform"),
        "first": (1, 1, "middle", "action", "teacher", "first"),
    }
    for arm, (vkd, akd, layer, queries, init, lmap) in expect.items():
        c = ablation.arm_config(cfg, arm, 6, seed=2, teacher_dir=teacher_dir)
        got = (c.loss.velocity_kd, c.loss.attention_kd, c.loss.attn_layer, c.loss.attn_queries, c.student.init,
               c.student.layer_map)
        assert got == (vkd, akd, layer, queries, init, lmap), arm
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


def test_quick_ablation_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "abl"
    # The demo dataset cache is validated and built atomically, so tests may share one across runs.
    cache = os.environ.get("SHALLOW_PI_TEST_CACHE", os.path.join(tempfile.gettempdir(), "shallow_pi_jax_test_cache"))
    env = dict(os.environ, SHALLOW_PI_CACHE=cache)
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
