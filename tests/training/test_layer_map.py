"""Layer maps: the paper's uniform rule, first/last, explicit lists, per-stack maps and their validation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training import recipes
from shallow_pi_jax.training.layer_map import (
    LayerMap,
    first_indices,
    from_config,
    is_expert_leaf,
    last_indices,
    make_layer_map,
    parse_layers,
    uniform_indices,
    validate_layer_map,
)
from shallow_pi_jax.training.student_init import student_params, student_shapes

UNIFORM_6 = (0, 3, 7, 10, 14, 17)


@pytest.mark.parametrize("teacher, student, expected", [
    (18, 6, (0, 3, 7, 10, 14, 17)),
    (18, 9, (0, 2, 4, 6, 8, 11, 13, 15, 17)),  # 8.5 rounds to 8: half to even
    (18, 4, (0, 6, 11, 17)),
    (18, 18, tuple(range(18))),
    (18, 2, (0, 17)),
    (18, 1, (0,)),
    (5, 3, (0, 2, 4)),
    (4, 3, (0, 2, 3)),  # linspace 0, 1.5, 3: 1.5 rounds to 2 (even)
    (6, 5, (0, 1, 2, 4, 5)),  # 2.5 rounds to 2 (even), not 3
])
def test_uniform(teacher, student, expected):
    assert uniform_indices(teacher, student) == expected
    lm = make_layer_map(teacher, student)
    assert lm.indices == expected and lm.strategy == "uniform" and lm.student_depth == student


def test_first_last_explicit():
    assert first_indices(18, 4) == (0, 1, 2, 3)
    assert last_indices(18, 4) == (14, 15, 16, 17)
    assert make_layer_map(18, 4, strategy="last").indices == (14, 15, 16, 17)
    lm = make_layer_map(18, layers=[1, 5, 9])
    assert lm.indices == (1, 5, 9) and lm.strategy == "explicit" and lm.student_depth == 3
    assert make_layer_map(18, 3, layers=(1, 5, 9)).indices == (1, 5, 9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(teacher_depth=18, student_depth=6, layers=[0, 3, 3, 10, 14, 17]), "strictly increasing"),
    (dict(teacher_depth=18, student_depth=3, layers=[5, 3, 7]), "strictly increasing"),
    (dict(teacher_depth=18, student_depth=3, layers=[0, 9, 18]), "out of range"),
    (dict(teacher_depth=18, student_depth=3, layers=[-1, 9, 17]), "out of range"),
    (dict(teacher_depth=18, student_depth=6, layers=[0, 3, 7, 10, 14]), "length"),
    (dict(teacher_depth=18, student_depth=19), "student_depth"),
    (dict(teacher_depth=18, student_depth=0), "student_depth"),
    (dict(teacher_depth=18, student_depth=6, strategy="random"), "strategy"),
    (dict(teacher_depth=18), "student_depth"),
    (dict(teacher_depth=18, layers=[]), "empty"),
])
def test_bad_maps(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_layer_map(**kwargs)


def test_validate_and_parse():
    validate_layer_map([0, 3, 7], 18, 3)
    with pytest.raises(ValueError, match="out of range"):
        validate_layer_map([0, 3, 17], 12, 3)
    assert parse_layers("0,3, 7,10 ,14,17") == (0, 3, 7, 10, 14, 17)
    with pytest.raises(ValueError, match="comma-separated"):
        parse_layers("0,3,x")


def test_layer_map_round_trip():
    lm = make_layer_map(18, 6)
    d = lm.to_dict()
    assert d == {"teacher_depth": 18, "student_depth": 6, "indices": [0, 3, 7, 10, 14, 17], "strategy": "uniform",
                 "expert_indices": [0, 3, 7, 10, 14, 17], "expert_strategy": "uniform"}
    assert LayerMap.from_dict(d) == lm
    # a record written before maps were per stack: both stacks take its indices
    old = LayerMap.from_dict({"teacher_depth": 18, "student_depth": 6, "indices": [0, 1, 2, 3, 4, 5],
                              "strategy": "first"})
    assert old.expert == (0, 1, 2, 3, 4, 5) and old.expert_strategy == "first" and old.shared
    with pytest.raises(ValueError, match="student_depth"):
        LayerMap.from_dict({**d, "student_depth": 5})
    with pytest.raises(ValueError, match="strictly increasing"):
        LayerMap(18, (3, 1))


def test_per_stack_maps():
    published = make_layer_map(18, 6, "first", expert_strategy="uniform")
    assert published.backbone == (0, 1, 2, 3, 4, 5) and published.expert == UNIFORM_6
    assert not published.shared and published.label == "backbone first, expert uniform"
    d = published.to_dict()
    assert (d["indices"], d["strategy"], d["expert_indices"], d["expert_strategy"]) == \
        ([0, 1, 2, 3, 4, 5], "first", list(UNIFORM_6), "uniform")
    assert LayerMap.from_dict(d) == published
    both_first = make_layer_map(18, 6, "first")
    assert both_first.expert == both_first.backbone == (0, 1, 2, 3, 4, 5) and both_first.label == "first"
    mixed = make_layer_map(18, 3, layers=[0, 1, 2], expert_layers=[5, 9, 17])
    assert (mixed.strategy, mixed.expert_strategy, mixed.expert) == ("explicit", "explicit", (5, 9, 17))
    assert make_layer_map(18, 4, "last", expert_strategy="first").expert == (0, 1, 2, 3)
    # which rows a parameter leaf keeps: the expert's leaves carry openpi's `_1` suffix
    for path, rows in [("PaliGemma/llm/layers/attn/q_einsum/w", (0, 1, 2, 3, 4, 5)),
                       ("PaliGemma/llm/layers/attn/q_einsum_1/w", UNIFORM_6),
                       ("PaliGemma/llm/layers/mlp/linear", (0, 1, 2, 3, 4, 5)),
                       ("PaliGemma/llm/layers/mlp_1/gating_einsum", UNIFORM_6),
                       ("PaliGemma/llm/layers/pre_ffw_norm_1/Dense_0/kernel", UNIFORM_6),
                       ("PaliGemma/llm/layers/pre_attention_norm/scale", (0, 1, 2, 3, 4, 5))]:
        assert published.rows(path) == rows, path
    with pytest.raises(ValueError, match="layer-stack leaf"):
        is_expert_leaf("PaliGemma/llm/final_norm_1/scale")


@pytest.mark.parametrize("kwargs, match", [
    (dict(teacher_depth=18, student_depth=3, layers=[0, 1, 2], expert_layers=[0, 9]), "expert layer map: .*length"),
    (dict(teacher_depth=18, student_depth=3, expert_layers=[0, 9, 18]), "expert layer map: .*out of range"),
    (dict(teacher_depth=18, student_depth=3, expert_strategy="random"), "expert layer map: strategy"),
])
def test_bad_expert_maps(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_layer_map(**kwargs)
    with pytest.raises(ValueError, match="expert_strategy"):
        LayerMap(18, (0, 1), "first", (0, 17), "sideways")


def test_from_config_strings_and_the_config_keys():
    assert from_config(18, 6, "uniform") == make_layer_map(18, 6)
    assert from_config(18, 6, "first", "same") == make_layer_map(18, 6, "first")
    assert from_config(18, 6, "first", "uniform") == make_layer_map(18, 6, "first", expert_strategy="uniform")
    lm = from_config(18, 3, "0,1,2", "4,8,17")
    assert (lm.backbone, lm.expert, lm.strategy, lm.expert_strategy) == ((0, 1, 2), (4, 8, 17), "explicit", "explicit")
    with pytest.raises(ValueError, match="student.expert_map: expected uniform, first, last"):
        from_config(18, 6, "uniform", "middle")
    with pytest.raises(ValueError, match="student.layer_map"):
        from_config(18, 6, "0,x")
    # the config keys: layer_map alone maps both stacks; expert_map=uniform with it is the published code's map
    c = recipes.distill_config(6, "size=demo,layer_map=first,expert_map=uniform")
    assert (c.student.layer_map, c.student.expert_map) == ("first", "uniform")
    c = recipes.distill_config(6, "size=demo,first")
    assert (c.student.layer_map, c.student.expert_map) == ("first", "same")
    with pytest.raises(ValueError, match="expert_map='middle' is not one of same, uniform, first, last"):
        recipes.distill_config(6, "expert_map=middle")
    c = recipes.distill_config(3, "size=demo")
    c.student.expert_map = "0,5"
    with pytest.raises(ValueError, match="config.student.expert_map"):
        run_plan.resolve(c)
    c.student.expert_map = "0,5,17"
    run_plan.resolve(c)


def _stacks(depth=18):
    """A teacher tree whose layer-stack rows hold their own teacher layer index (backbone, expert, expert LoRA)."""
    rows = np.arange(depth, dtype=np.float32)
    return {"PaliGemma": {
        "llm": {"layers": {"attn": {"q_einsum": {"w": rows[:, None] + 0.0}, "q_einsum_1": {"w": rows[:, None] + 100.0}},
                           "mlp_1": {"linear": rows[:, None] + 200.0}}},
        "img": {"head": {"kernel": np.ones((2, 2), np.float32)}}}}


@pytest.mark.parametrize("on_device", [False, True])
def test_student_takes_each_stacks_own_rows(on_device):
    teacher = _stacks()
    if on_device:
        teacher = jax.tree.map(jnp.asarray, teacher)
    published = make_layer_map(18, 6, "first", expert_strategy="uniform")
    s = student_params(teacher, published)
    layers = s["PaliGemma"]["llm"]["layers"]
    np.testing.assert_array_equal(np.asarray(layers["attn"]["q_einsum"]["w"])[:, 0], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(np.asarray(layers["attn"]["q_einsum_1"]["w"])[:, 0], np.add(UNIFORM_6, 100))
    np.testing.assert_array_equal(np.asarray(layers["mlp_1"]["linear"])[:, 0], np.add(UNIFORM_6, 200))
    assert s["PaliGemma"]["img"]["head"]["kernel"] is teacher["PaliGemma"]["img"]["head"]["kernel"]
    shapes = student_shapes(teacher, published)
    assert shapes["PaliGemma"]["llm"]["layers"]["mlp_1"]["linear"].shape == (6, 1)
    # a plain list still maps both stacks alike
    both = student_params(teacher, [0, 9, 17])["PaliGemma"]["llm"]["layers"]["attn"]
    np.testing.assert_array_equal(np.asarray(both["q_einsum_1"]["w"])[:, 0], [100, 109, 117])


def test_published_config_maps_the_stacks_and_distils_attention_of_the_experts_layer():
    c = recipes.distill_config(6, "size=demo,layer_map=first,expert_map=uniform")
    plan = run_plan.derive(c)
    assert (plan.layer_map.backbone, plan.layer_map.expert) == ((0, 1, 2, 3, 4, 5), UNIFORM_6)
    # the middle student layer 3 started from teacher layer 10 in the expert (whose queries are distilled)
    assert plan.step.attn_pairs == ((3, 10),)
    assert run_plan.derive(recipes.distill_config(6, "size=demo,first")).step.attn_pairs == ((3, 3),)
