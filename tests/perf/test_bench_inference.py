"""FLOP counting with unrolled scans, the vision/prefix/denoise split, and the bench CLI (tiny sizes)."""
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shallow_pi_jax.models.config import tiny_config
from shallow_pi_jax.models.params import param_shapes, random_params_in_dtype
from shallow_pi_jax.models.prefix import PrefixPlan, full_plan
from shallow_pi_jax.perf import costs

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _scan_matmuls(x, w):
    def body(c, _):
        return jnp.tanh(c @ w), c.sum()
    return jax.lax.scan(body, x, None, length=10)


def test_unrolled_scan_counts_every_iteration_and_computes_the_same():
    x = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    one_matmul = 2 * 64 ** 3
    rolled = costs.xla_flops(_scan_matmuls, x, x, unroll=False)
    unrolled = costs.xla_flops(_scan_matmuls, x, x)
    assert rolled < 2 * one_matmul  # XLA counts a loop body once: why unrolling is needed
    assert abs(unrolled - 10 * one_matmul) / (10 * one_matmul) < 0.02
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.normal(size=(64, 64)) / 8, jnp.float32) for _ in range(2))
    want, got = _scan_matmuls(a, b), costs.unroll_scans(_scan_matmuls, a, b)(a, b)
    np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], atol=1e-4)


def test_reverse_scan_and_stacked_outputs():
    def f(xs):
        return jax.lax.scan(lambda c, x: (c + x, c * x), jnp.zeros(3), xs, reverse=True)

    xs = jnp.arange(12.0).reshape(4, 3)
    for w, g in zip(f(xs), costs.unroll_scans(f, xs)(xs)):
        np.testing.assert_array_equal(w, g)


@pytest.fixture(scope="module")
def tiny_flops():
    cfg = tiny_config(depth=2)
    return cfg, {s: costs.inference_flops(cfg, num_steps=s, compiled=False, check_whole=True) for s in (2, 4)}


def test_split_is_consistent(tiny_flops):
    cfg, f = tiny_flops
    two, four = f[2], f[4]
    # Same prefix / vision whatever the number of steps; denoising is linear in the steps.
    assert two.vision == four.vision and two.prefix == four.prefix
    assert abs(four.denoise - 2 * two.denoise) / four.denoise < 0.01
    # sample_actions in one piece agrees with the sum of its parts. Scans are unrolled inside their loop
    # (unroll = trip count), as the model runs, so XLA cannot drop the last layer's unused prefix work
    # in the whole program either; what remains is fusion noise, well under one layer's prefix work.
    for f_ in (two, four):
        assert abs(f_.total - f_.whole) < 0.05 * f_.prefix / cfg.depth
    assert min(two.vision, two.prefix, two.denoise) > 0
    # Vision is per camera: two of three cameras cost two thirds.
    two_cams = costs.vision_flops(cfg, cfg.image_keys[:2], compiled=False)
    assert abs(two_cams - 2 / 3 * two.vision) / two.vision < 1e-6


def teacher_total(f):
    return f[2].total


def test_student_costs_less_where_layers_are_removed(tiny_flops):
    cfg, f = tiny_flops
    student = costs.inference_flops(cfg.with_depth(1), num_steps=2, compiled=False)
    assert student.total < teacher_total(f)
    teacher = f[2]
    assert student.vision == teacher.vision  # SigLIP is not distilled
    # Halving the layers roughly halves the layer stacks (embedding / heads stay).
    assert 1.6 < teacher.prefix / student.prefix < 2.05
    assert 1.6 < teacher.denoise / student.denoise < 2.05


def test_compacted_prefix_costs_less(tiny_flops):
    cfg, f = tiny_flops
    full = f[2]
    same = costs.inference_flops(cfg, num_steps=2, compiled=False, plan=full_plan(cfg))
    assert abs(same.total - full.total) / full.total < 1e-3  # openpi's plan is openpi's program
    compact = costs.inference_flops(cfg, num_steps=2, compiled=False, plan=PrefixPlan(cfg.image_keys[:2], 32))
    assert (full.prefix_len, compact.prefix_len) == (cfg.prefix_len, 2 * cfg.tokens_per_image + 32)
    assert abs(compact.vision - 2 / 3 * full.vision) / full.vision < 1e-6
    # Projections and MLPs scale with the prefix tokens, attention with their square.
    kept = compact.prefix_len / full.prefix_len
    assert kept ** 2 - 0.02 < compact.prefix / full.prefix < kept + 0.02
    # The action tokens attend to fewer cached keys.
    assert compact.denoise < full.denoise
    with pytest.raises(ValueError, match="not both"):
        costs.inference_flops(cfg, active_cameras=cfg.image_keys, plan=full_plan(cfg))


@pytest.mark.slow
def test_random_params_are_drawn_in_their_dtype():
    cfg = tiny_config(depth=2)
    shapes = param_shapes(cfg)
    for dtype in ("bfloat16", None):
        p = random_params_in_dtype(cfg, seed=0, dtype=dtype)
        want = jnp.bfloat16 if dtype else jnp.float32
        assert jax.tree.structure(p) == jax.tree.structure(shapes)
        for got, ref in zip(jax.tree.leaves(p), jax.tree.leaves(shapes)):
            assert got.shape == ref.shape and got.dtype == want
    big = max(jax.tree.leaves(p), key=lambda x: x.size)
    std = float(jnp.std(big.astype(jnp.float32)))
    assert abs(std - 1 / np.sqrt(big.shape[-2])) < 0.1 / np.sqrt(big.shape[-2])
    again = random_params_in_dtype(cfg, seed=0)
    assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(again)))


@pytest.mark.slow
def test_bench_cli_tiny(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "shallow_pi_jax.bench_inference", "--flops-size", "tiny", "--latency-size",
           "tiny", "--teacher-depth", "2", "--student-depth", "1", "--num-steps", "2", "--repeats", "2",
           "--warmup", "0", "--fast-flops", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| total |" in res.stdout and "teacher L2" in res.stdout and "student L1" in res.stdout
    assert "Skipping SigLIP on the masked camera" in res.stdout
    r = json.loads(out.read_text())
    t3 = r["flops"]["teacher"]["3 cameras"]
    t2 = r["flops"]["teacher"]["2 cameras (masked 3rd skipped)"]
    assert t2["total"] < t3["total"] and t2["prefix"] == t3["prefix"]
    assert r["latency"]["student"]["3 cameras"]["median_ms"] > 0
    # Compacted: the masked camera's tokens and the prompt padding past the 32-token bucket are gone.
    assert "Side by side" in res.stdout and "Compaction alone" in res.stdout
    assert r["prompt_bucket"] == 32 and r["prefix_len"] == {"openpi": 3 * 4 + 40, "compacted": 2 * 4 + 32}
    for who in ("teacher", "student"):
        c, t2_ = r["flops"][who]["compacted"], r["flops"][who]["2 cameras (masked 3rd skipped)"]
        assert c["vision"] == t2_["vision"] and c["prefix"] < t2_["prefix"] and c["denoise"] < t2_["denoise"]
    assert r["latency"]["student"]["compacted"]["median_ms"] > 0
    # Latency next to FLOPs, one child process per model: its params and its own peak memory.
    assert "Latency side by side" in res.stdout and "fraction of FLOP ratio reached" in res.stdout
    assert r["latency_settings"] == ["3 cameras", "compacted"]
    for who in ("teacher", "student"):
        for name in r["latency_settings"]:
            assert r["latency_flops"][who][name] == r["flops"][who][name]["total"]  # same sizes: reused
        m = r["latency_model"][who]
        assert m["param_dtype"] == "float32" and 100 < m["peak_rss_mib"] < 16 * 1024
    assert r["latency_model"]["teacher"]["params"] > r["latency_model"]["student"]["params"]
    bad = subprocess.run([sys.executable, "-m", "shallow_pi_jax.bench_inference", "--student-depth", "0"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "--student-depth" in bad.stderr
