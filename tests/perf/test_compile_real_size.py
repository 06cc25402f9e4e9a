"""MaxText-style check: the real-size l6 distillation step lowers and compiles on CPU for an 8-device
mesh, from abstract inputs only (no weights allocated, nothing executed)."""
import pathlib

import jax
import pytest

from shallow_pi_jax.training import build, recipes, sharding
from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training.metrics import memory_summary

pytestmark = pytest.mark.slow


def test_real_size_l6_step_compiles_on_8_devices():
    config = recipes.load(str(pathlib.Path(__file__).parents[2] / "experiments" / "l6.py"))
    config.teacher.params = "/nonexistent/teacher/params"  # only its shapes are used
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    assert mesh.devices.size == 8
    step, args = build.abstract_step_inputs(run_plan.derive(config), mesh, global_batch=64)
    state, batch, rng, teacher = args
    n_student = sum(x.size for x in jax.tree.leaves(state.params))
    n_teacher = sum(x.size for x in jax.tree.leaves(teacher))
    assert n_teacher == 3_353_433_872
    assert 1.0e9 < n_student < 2.0e9  # 6 of 18 layers of both experts + everything outside the stack
    compiled = step.lower(*args).compile()
    mem = memory_summary(compiled)
    # FSDP: each device holds ~1/8 of the f32 student (+2 Adam moments) and of the bf16 teacher.
    per_device_state = (n_student * 4 * 3 + n_teacher * 2) / 8
    assert mem["argument"] < 1.3 * per_device_state + 2 ** 30, mem
