"""TPU ahead-of-time compilation (shallow_pi_jax/perf/aot.py, shallow_pi_jax/aot_compile.py) on a CPU-only host.

The tiny config's fused distillation step is compiled for a 4-chip v5e slice by libtpu's compiler;
without libtpu these tests are skipped with the reason (never passed silently).
"""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shallow_pi_jax.perf import aot, costs
from shallow_pi_jax.training import recipes, sharding

ROOT = pathlib.Path(__file__).parents[2]
NO_LIBTPU = aot.libtpu_missing()
needs_libtpu = pytest.mark.skipif(NO_LIBTPU is not None, reason=str(NO_LIBTPU))
aot.quiet_libtpu_env()


def l6(arg=""):
    return recipes.load(f"{ROOT / 'experiments' / 'l6.py'}:{arg}")


def test_matmul_flops_counts_loop_trips_and_remat():
    n, d, length = 4, 8, 3

    def f(x, w):
        def body(c, _):
            return jax.checkpoint(lambda c: jnp.tanh(c @ w))(c), None
        return jax.lax.scan(body, x, None, length=length)[0].sum()

    x, w = jnp.ones((n, d)), jnp.ones((d, d))
    one = 2 * n * d * d
    assert costs.matmul_flops(f, x, w) == length * one
    # grad wrt w: forward, then per layer: recompute (remat), d/dc and d/dw.
    assert costs.matmul_flops(jax.grad(f, argnums=1), x, w) == length * one + length * 3 * one


def test_matmul_flops_convolution():
    x = jnp.ones((2, 16, 16, 3))
    k = jnp.ones((4, 4, 3, 5))
    f = lambda x, k: jax.lax.conv_general_dilated(x, k, (4, 4), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert costs.matmul_flops(f, x, k) == 2 * (2 * 4 * 4 * 5) * (4 * 4 * 3)


def test_unroll_scans_same_result_no_loop():
    def f(x, w):
        return jax.lax.scan(lambda c, _: (jnp.sin(c @ w), c.sum()), x, None, length=4)

    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5))
    w = jax.random.normal(jax.random.PRNGKey(1), (5, 5))
    g = costs.unroll_scans(f, x, w)
    # The same float32 math, compiled as a loop body or as 4 unrolled copies: XLA may pick another dot
    # kernel for each (this CPU's differ in the last bits, 1e-6 apart), so compare at the float32 parity
    # tolerance, 1e-5 of the output's scale.
    for got, want in zip(g(x, w), f(x, w)):
        want = np.asarray(want)
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-5 * max(1.0, np.abs(want).max()))
    assert "while" in jax.jit(f).lower(x, w).as_text()
    assert "while" not in jax.jit(g).lower(x, w).as_text()


def test_extrapolated_cost_matches_full_unroll_on_cpu():
    """The depth-linear model from depth 1 and 2 reproduces XLA's count of the fully unrolled program."""
    def make(depths):
        def f(x, w):
            return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=depths["layers"])[0]
        return f, (jax.ShapeDtypeStruct((64, 128), jnp.float32), jax.ShapeDtypeStruct((128, 128), jnp.float32))

    est = aot.extrapolated_cost(make, {"layers": 7}, {"layers": 1})
    fn, args = make({"layers": 7})
    full = costs.xla_cost(costs.compile_timed(costs.unroll_scans(fn, *args), args)[0])
    looped = costs.xla_cost(costs.compile_timed(fn, args)[0])
    assert est["flops"] == pytest.approx(full["flops"], rel=1e-6)
    assert looped["flops"] < full["flops"] / 3  # the reason for all this: a loop body counted once


def test_bad_topology_and_mesh_names():
    with pytest.raises(ValueError, match="topology"):
        aot.tpu_topology("v9:4x4")
    with pytest.raises(ValueError, match="mesh"):
        aot.parse_mesh("data=2,model=4", l6("size=tiny"))
    assert aot.parse_mesh("data=2,fsdp=8", l6("size=tiny")) == (2, 8)
    assert aot.parse_mesh("fsdp=4", l6("size=tiny")) == (-1, 4)
    assert aot.parse_mesh(None, l6("size=tiny")) == (1, -1)


@pytest.mark.tpu
@needs_libtpu
def test_tiny_fused_step_compiles_for_v5e_2x2():
    topo = aot.tpu_topology("v5e:2x2")
    assert len(topo.devices) == 4 and topo.devices[0].platform == "tpu"
    config = l6("size=tiny")
    mesh = sharding.make_mesh(1, -1, devices=topo.devices)
    r = aot.train_step_report(config, mesh, topo.chip, global_batch=8, kind="kd", topology=topo.name, estimate=False)
    mem = r.memory
    # Sanity of the memory analysis: the state is FSDP-sharded, so a chip holds at least its 1/4 share of the
    # arguments and at most all of them (small leaves are replicated) plus TPU tile padding, which for
    # tiny arrays (norm scales, biases, scalars) can double them; the state is donated (aliased outputs).
    step, (state, batch, rng, teacher) = aot.train_step_and_args(aot.step_config(config, "kd"), mesh, 8)
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    whole = nbytes(state) + nbytes(batch) + nbytes(teacher)
    assert whole / 4 <= mem["argument"] <= 2 * whole, (mem, whole)
    assert mem["alias"] >= 0.9 * nbytes(state) / 4, mem
    assert mem["temp"] > 0 and mem["generated_code"] > 0
    assert 0 < mem["total"] < topo.chip.hbm_bytes and r.fits
    assert r.matmul_flops > 0 and r.loop_once["flops"] > 0


def test_extrapolated_cost_cache_shared_between_depths():
    calls = []

    def make(depths):
        calls.append(dict(depths))
        f = lambda x, w: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=depths["layers"])[0]
        return f, (jax.ShapeDtypeStruct((8, 16), jnp.float32), jax.ShapeDtypeStruct((16, 16), jnp.float32))

    cache = {}
    deep = aot.extrapolated_cost(make, {"layers": 18}, {"layers": 1}, cache=cache)
    shallow = aot.extrapolated_cost(make, {"layers": 6}, {"layers": 1}, cache=cache)
    assert len(calls) == 2  # depth 1 and 2, compiled once for both
    per_layer = 2 * 8 * 16 * 16
    assert deep["flops"] - shallow["flops"] == pytest.approx(12 * per_layer, rel=1e-6)
