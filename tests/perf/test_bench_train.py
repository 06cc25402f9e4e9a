"""shallow_pi_jax.bench_train: the fused KD step against the plain student step, on a 2-layer teacher."""
import pathlib

import jax
import pytest

from shallow_pi_jax import bench_train
from shallow_pi_jax.models.pi0 import Pi0
from shallow_pi_jax.perf import aot, costs
from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training import recipes, sharding

ROOT = pathlib.Path(__file__).parents[2]


def small_config():
    c = recipes.load(f"{ROOT / 'experiments' / 'l6.py'}:size=tiny")
    c.model.llm.depth = c.model.expert.depth = 2
    c.model.siglip.depth = 1
    c.student.depth = 1
    return c


@pytest.mark.slow
def test_kd_step_costs_plain_step_plus_teacher_forward():
    """Matmul FLOPs: fused KD step = plain student step + one teacher forward (nothing else is added)."""
    config, batch = small_config(), 8
    mesh = sharding.make_mesh(1, -1, devices=jax.devices()[:1])
    kd = costs.matmul_flops(*_step(config, "kd", mesh, batch))
    plain = costs.matmul_flops(*_step(config, "plain", mesh, batch))
    plan = run_plan.derive(aot.step_config(config, "kd"))
    _, (state, b, rng, teacher) = aot.train_step_and_args(aot.step_config(config, "kd"), mesh, batch)
    obs = {k: v for k, v in b.items() if k != "actions"}
    t_fwd = costs.matmul_flops(
        lambda p, o, x, t: Pi0(plan.teacher).apply({"params": p}, o, x, t, method=Pi0.velocity),
        teacher, obs, b["actions"], jax.ShapeDtypeStruct((batch,), b["actions"].dtype))
    assert kd == pytest.approx(plain + t_fwd, rel=1e-9)


def _step(config, kind, mesh, batch):
    step, args = aot.train_step_and_args(aot.step_config(config, kind), mesh, batch)
    return (step, *args)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="--devices"):
        bench_train.main(["--skip-timing", "--devices", f"8,{len(jax.devices()) + 1}"])
    with pytest.raises(ValueError, match="--repeats"):
        bench_train.main(["--skip-memory", "--repeats", "0", "--devices", "1"])
    with pytest.raises(ValueError, match="no such file"):
        bench_train.main(["--skip-timing", "--devices", "1", "--config", "experiments/nope.py"])
