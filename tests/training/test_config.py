"""Experiment config args (`experiments/l6.py:key=value,...`): each key sets its fields, the old bare words are
aliases for exactly one key, and anything unknown or contradictory is an error naming the key and its values."""
import pathlib

import pytest

from shallow_pi_jax.training import recipes

EXPERIMENTS = pathlib.Path(__file__).parents[2] / "experiments"


def l6(arg=""):
    return recipes.load(f"{EXPERIMENTS / 'l6.py'}:{arg}" if arg else str(EXPERIMENTS / "l6.py"))


@pytest.mark.parametrize("arg, fields", [
    ("model=pi0", {"model.pi05": False, "data.pi05": False}),
    ("model=pi05", {"model.pi05": True, "data.pi05": True}),
    ("size=real", {"teacher.params": "", "num_steps": 30_000, "model.dtype": "bfloat16", "remat": True}),
    ("size=demo", {"teacher.params": "demo", "num_steps": 200, "model.image_size": (64, 64), "data.augment": False}),
    ("size=tiny", {"teacher.params": "demo", "num_steps": 4, "model.image_size": (32, 32), "batch_size": 8}),
    ("loss=full", {"loss.velocity_kd": 1.0, "loss.attention_kd": 1.0}),
    ("loss=kd", {"loss.velocity_kd": 1.0, "loss.attention_kd": 0.0}),
    ("loss=task_only", {"loss.velocity_kd": 0.0, "loss.attention_kd": 0.0}),
    ("attn_layer=initial", {"loss.attn_layer": "initial"}),
    ("attn_layer=middle", {"loss.attn_layer": "middle"}),
    ("attn_layer=late", {"loss.attn_layer": "late"}),
    ("attn_queries=action", {"loss.attn_queries": "action"}),
    ("attn_queries=all", {"loss.attn_queries": "all"}),
    ("init=teacher", {"student.init": "teacher", "loss.attention_kd": 1.0}),
    ("init=scratch", {"student.init": "scratch", "loss.velocity_kd": 0.0, "loss.attention_kd": 0.0}),
    ("layer_map=uniform", {"student.layer_map": "uniform"}),
    ("layer_map=first", {"student.layer_map": "first"}),
    ("layer_map=last", {"student.layer_map": "last"}),
    ("depth=4", {"student.depth": 4}),
])
def test_each_key_sets_its_fields(arg, fields):
    c = l6(arg)
    for path, want in fields.items():
        value = c
        for part in path.split("."):
            value = value[part]
        assert (tuple(value) if isinstance(want, tuple) else value) == want, path


def test_defaults_are_the_papers_recipe():
    c = l6()
    assert c.model.pi05 and c.teacher.params == "" and c.student.depth == 6 and c.student.init == "teacher"
    assert (c.loss.velocity_kd, c.loss.attention_kd, c.loss.attn_layer, c.loss.attn_queries) == (1.0, 1.0, "middle",
                                                                                                 "action")
    assert c.student.layer_map == "uniform"


@pytest.mark.parametrize("name, depth", [("l4", 4), ("l6", 6), ("l9", 9)])
def test_depth_key_overrides_every_experiments_default(name, depth):
    assert recipes.load(str(EXPERIMENTS / f"{name}.py")).student.depth == depth
    assert recipes.load(f"{EXPERIMENTS / name}.py:depth=4,size=demo").student.depth == 4


@pytest.mark.parametrize("alias, kv", [
    ("demo", "size=demo"), ("tiny", "size=tiny"), ("pi0", "model=pi0"), ("pi05", "model=pi05"),
    ("task_only", "loss=task_only"), ("kd", "loss=kd"), ("full", "loss=full"),
    ("attn_initial", "attn_layer=initial"), ("attn_middle", "attn_layer=middle"), ("attn_late", "attn_layer=late"),
    ("attn_all", "attn_queries=all"), ("scratch", "init=scratch"), ("first", "layer_map=first"),
    ("demo,pi0,kd,attn_late", "size=demo,model=pi0,loss=kd,attn_layer=late"),
    ("demo,size=demo", "size=demo"),  # the same value twice is no contradiction
    ("scratch,task_only", "init=scratch"),
])
def test_old_aliases_equal_the_key_value_form(alias, kv):
    assert l6(alias).to_dict() == l6(kv).to_dict()


def test_teacher_takes_model_and_size():
    c = recipes.teacher_config("size=demo,model=pi0")
    assert c.teacher.params == "" and not c.model.pi05 and c.num_steps == 3000 and c.student.init == "scratch"
    assert recipes.teacher_config("demo").to_dict() == recipes.teacher_config("size=demo").to_dict()
    assert recipes.teacher_config("size=tiny").num_steps == 4  # tiny keeps its smoke-test budget
    with pytest.raises(ValueError, match=r"unknown key 'loss'.*valid keys: model, size"):
        recipes.teacher_config("kd")


@pytest.mark.parametrize("arg, match", [
    ("nope=1", r"unknown key 'nope'.*valid keys: depth, model, size, loss, attn_layer"),
    ("loss=foo", r"loss='foo' is not one of task_only, kd, full"),
    ("size=huge", r"size='huge' is not one of real, demo, tiny"),
    ("depth=six", r"depth='six' is not a positive integer"),
    ("depth=0", r"depth='0' is not a positive integer"),
    ("bogus", r"'bogus' is not key=value with a key in depth, model, size, loss.*short form: demo, tiny"),
    ("attn_initial,attn_late", r"attn_layer is set to both 'initial' \(by 'attn_initial'\) and 'late'"),
    ("pi0,pi05", r"model is set to both 'pi0' .* and 'pi05'"),
    ("demo,size=real", r"size is set to both 'demo' .* and 'real'"),
    ("demo,tiny", r"size is set to both 'demo' .* and 'tiny'"),
    ("scratch,kd", r"loss is set to both 'task_only' \(by 'scratch'\) and 'kd'"),
    ("loss=full,init=scratch", r"loss is set to both 'full' .* and 'task_only' \(by 'init=scratch'\)"),
])
def test_bad_args_name_the_key_and_the_valid_values(arg, match):
    with pytest.raises(ValueError, match=match):
        l6(arg)


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match="no such file 'experiments/nope.py'"):
        recipes.load("experiments/nope.py:demo")
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(ValueError, match=f"{empty} has no get_config"):
        recipes.load(str(empty))
