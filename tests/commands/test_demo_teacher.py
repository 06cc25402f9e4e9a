"""Which demo teacher a `demo` config gets (shallow_pi_jax/demo.py): the shipped one only when its
architecture is exactly the config's, else a cached one of that architecture."""
import json

import pytest

from shallow_pi_jax import demo
from shallow_pi_jax.eval.closed_loop import evaluate
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.serve.policy import load_policy
from shallow_pi_jax.training import recipes


def test_shipped_teacher_only_for_its_own_architecture(tmp_path, monkeypatch):
    monkeypatch.setenv("SHALLOW_PI_CACHE", str(tmp_path))
    shipped = json.loads((demo.PACKAGE_TEACHER / "model_config.json").read_text())
    same = recipes.distill_config(6, "size=demo,model=pi05" if shipped["pi05"] else "size=demo,model=pi0")
    assert demo.demo_teacher(ModelConfig.from_dict(same.model)) == demo.PACKAGE_TEACHER / "params"

    other = recipes.distill_config(6, "size=demo,model=pi0" if shipped["pi05"] else "size=demo,model=pi05")
    built = demo.built_teacher_dir(ModelConfig.from_dict(other.model))
    assert built.parent == tmp_path and built != demo.built_teacher_dir(ModelConfig.from_dict(same.model))
    (built / "params").mkdir(parents=True)  # stands in for a teacher trained earlier (training takes minutes)
    assert demo.demo_teacher(ModelConfig.from_dict(other.model)) == built / "params"


@pytest.mark.slow
def test_shipped_teacher_solves_the_simulator():
    """The bundled teacher must really read the image and the instruction, through the serving path."""
    policy = load_policy(demo.PACKAGE_TEACHER, env="demo", num_steps=10)
    # Held-out reset seeds (the demo data use tuple seeds); 96.5 % over the first 200 of them.
    result = evaluate(policy, range(100_000, 100_040), replan_every=5, num_envs=40)
    # Blind policies score <= 5 %, instruction-blind ones ~25 % (docs/sim.md).
    assert result["success_rate"] >= 0.85, result
