"""Which demo teacher a `demo` config gets (shallow_pi_jax/demo.py): the shipped one only when its
architecture is exactly the config's, else a cached one of that architecture."""
import json

from shallow_pi_jax import configs, demo


def test_shipped_teacher_only_for_its_own_architecture(tmp_path, monkeypatch):
    monkeypatch.setenv("SHALLOW_PI_CACHE", str(tmp_path))
    shipped = json.loads((demo.PACKAGE_TEACHER / "model_config.json").read_text())
    same = configs.distill_config(6, "demo,pi05" if shipped["pi05"] else "demo,pi0")
    assert demo.demo_teacher(same) == demo.PACKAGE_TEACHER / "params"

    other = configs.distill_config(6, "demo,pi0" if shipped["pi05"] else "demo,pi05")
    built = demo.built_teacher_dir(other.model)
    assert built.parent == tmp_path and built != demo.built_teacher_dir(same.model)
    (built / "params").mkdir(parents=True)  # stands in for a teacher trained earlier (training takes minutes)
    assert demo.demo_teacher(other) == built / "params"
