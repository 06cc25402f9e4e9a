"""Layer maps: the paper's uniform rule, first/last, explicit lists and their validation."""
import pytest

from shallow_pi_jax.training.layer_map import (
    LayerMap,
    first_indices,
    last_indices,
    make_layer_map,
    parse_layers,
    uniform_indices,
    validate_layer_map,
)


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
    assert d == {"teacher_depth": 18, "student_depth": 6, "indices": [0, 3, 7, 10, 14, 17], "strategy": "uniform"}
    assert LayerMap.from_dict(d) == lm
    with pytest.raises(ValueError, match="student_depth"):
        LayerMap.from_dict({**d, "student_depth": 5})
    with pytest.raises(ValueError, match="strictly increasing"):
        LayerMap(18, (3, 1))
