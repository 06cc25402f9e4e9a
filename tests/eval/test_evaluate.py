"""shallow_pi_jax.evaluate on held-out demo episodes, and shallow_pi_jax.layer_similarity (tiny random checkpoints)."""
import json
import pathlib
import subprocess

import numpy as np
import pytest

from shallow_pi_jax import cli, evaluate
from shallow_pi_jax.eval import open_loop
from shallow_pi_jax.serve.testing import tiny_config, write_tiny_checkpoint

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_error_accumulator_per_step():
    acc = open_loop.ErrorAccumulator()
    truth = np.zeros((2, 3, 2))
    pred = np.zeros((2, 3, 2))
    pred[:, 1, 0] = 2.0   # step 2, dim 0 is off by 2 in both frames
    pred[0, 2, :] = -1.0  # step 3 off by 1 in one frame
    acc.add(pred[:1], truth[:1])
    acc.add(pred[1:], truth[1:])
    s = acc.summary()
    np.testing.assert_allclose(s["mae_per_step"], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(s["rmse_per_step"], [0.0, np.sqrt(2.0), np.sqrt(0.5)])
    np.testing.assert_allclose(s["mae_per_dim"], [2.5 / 3, 0.5 / 3])
    assert s["frames"] == 2


@pytest.mark.slow
def test_evaluate_cli_on_held_out_demo_episodes(tmp_path, monkeypatch, capsys):
    cfg = tiny_config(depth=2, cameras=("base_0_rgb", "left_wrist_0_rgb"), action_horizon=4)
    student = write_tiny_checkpoint(tmp_path / "student", cfg, seed=0, state_dim=2, robot_action_dim=2,
                                    layer_map={"teacher_depth": 4, "indices": [0, 3]})
    teacher = write_tiny_checkpoint(tmp_path / "teacher", cfg.with_depth(4), seed=1, state_dim=2, robot_action_dim=2)
    # The student's normalisation is the teacher's (as the trainer exports it).
    (student / "assets" / "norm_stats.json").write_text((teacher / "assets" / "norm_stats.json").read_text())
    monkeypatch.setenv("SHALLOW_PI_CACHE", str(tmp_path / "cache"))
    base = ["--env", "demo", "--episodes", "3", "--batch-size", "8", "--max-frames", "20", "--num-steps", "3"]

    def run(*extra):
        # In-process (one jax/TF start-up, shared compile cache); the CLI's own entry point.
        rc = cli.run(evaluate.main, base + list(extra))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(extra, rc, out.out, out.err)

    res = run("--checkpoint", str(student), "--teacher", str(teacher), "--out", str(tmp_path / "eval"))
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert (tmp_path / "eval" / "action_error.png").stat().st_size > 1000
    assert set(s["errors"]) == {"student_vs_truth", "teacher_vs_truth", "student_vs_teacher"}
    for res_ in s["errors"].values():
        assert res_["frames"] == 20 and len(res_["mae_per_step"]) == 4 and len(res_["mae_per_dim"]) == 2
        assert res_["mae"] > 0
    assert s["student_depth"] == 2 and s["teacher_depth"] == 4 and s["layer_map"]["indices"] == [0, 3]
    # Triangle inequality on the MAE of the same frames and noise.
    e = s["errors"]
    assert e["student_vs_truth"]["mae"] <= e["teacher_vs_truth"]["mae"] + e["student_vs_teacher"]["mae"] + 1e-9

    # A teacher evaluated against itself: zero error (same batches, same noise), ground truth error unchanged.
    # (the student given as the directory's params/, the other form a policy path may take)
    res = run("--checkpoint", str(teacher / "params"), "--teacher", str(teacher), "--out", str(tmp_path / "self"))
    assert res.returncode == 0, res.stderr[-3000:]
    s2 = json.loads((tmp_path / "self" / "summary.json").read_text())["errors"]
    assert s2["student_vs_teacher"]["mae"] == 0.0
    assert s2["student_vs_truth"]["mae"] == s2["teacher_vs_truth"]["mae"] == e["teacher_vs_truth"]["mae"]

    res = run("--checkpoint", str(student), "--out", str(tmp_path / "eval"))
    assert res.returncode == 1 and res.stderr.startswith("error: --out:") and "exists" in res.stderr
    other = write_tiny_checkpoint(tmp_path / "other", tiny_config(depth=1, action_horizon=6,
                                  cameras=("base_0_rgb", "left_wrist_0_rgb")), state_dim=2, robot_action_dim=2)
    res = run("--checkpoint", str(student), "--teacher", str(other), "--out", str(tmp_path / "x"))
    assert res.returncode == 1 and res.stderr.startswith("error: teacher.action_horizon")
    assert not (tmp_path / "x").exists()
