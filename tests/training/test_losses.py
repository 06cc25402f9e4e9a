"""Loss terms against hand-computed values, and the attention-KD properties the method relies on."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES

from shallow_pi_jax.checkpoint.policy_dir import load_model
from shallow_pi_jax.eval import parity
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.pi0 import Pi0
from shallow_pi_jax.training import losses
from shallow_pi_jax.training.student_init import student_params


def test_flow_matching_and_velocity_kd_by_hand():
    v = jnp.array([[[1.0, 2.0], [0.0, -1.0]]])
    u = jnp.array([[[0.0, 0.0], [1.0, 1.0]]])
    # squared errors 1, 4, 1, 4 → mean 2.5
    assert float(losses.flow_matching_loss(v, u)) == pytest.approx(2.5, abs=1e-7)
    assert float(losses.velocity_kd_loss(v, u)) == pytest.approx(2.5, abs=1e-7)
    # no gradient flows into the teacher
    g = jax.grad(lambda t: losses.velocity_kd_loss(v, t))(u)
    assert float(jnp.abs(g).sum()) == 0.0


def test_attention_kd_by_hand_with_renormalisation():
    # one layer, batch 1, one head, one query, 3 keys; key 2 is padding.
    t = jnp.array([0.5, 0.3, 0.2]).reshape(1, 1, 1, 1, 3)
    s = jnp.array([0.2, 0.6, 0.2]).reshape(1, 1, 1, 1, 3)
    keys = jnp.array([[True, True, False]])
    pt, ps = np.array([0.5, 0.3]) / 0.8, np.array([0.2, 0.6]) / 0.8
    expected = float(np.sum(pt * np.log(pt / ps)))
    assert float(losses.attention_kd_loss(t, s, keys)) == pytest.approx(expected, rel=1e-5)


def test_masked_keys_carry_no_weight():
    rng = np.random.default_rng(0)
    def probs(shape):
        x = rng.random(shape)
        return jnp.asarray(x / x.sum(-1, keepdims=True), jnp.float32)
    t, s = probs((1, 2, 3, 4, 6)), probs((1, 2, 3, 4, 6))
    keys = jnp.array([[1, 1, 0, 1, 0, 0], [1, 0, 1, 1, 1, 0]], bool)
    base = losses.attention_kd_loss(t, s, keys)
    # whatever mass sits on masked keys, the loss does not change
    t2 = t.at[:, 0, ..., 4].mul(50.0).at[..., 5].set(0.9)  # key 4 masked in example 0, key 5 everywhere
    s2 = s.at[:, 0, ..., 2].mul(0.01)  # key 2 masked in example 0 only
    for a, b in ((t2, s), (t, s2)):
        assert float(losses.attention_kd_loss(a, b, keys)) == pytest.approx(float(base), rel=1e-5)
    # and its gradient w.r.t. the student is zero on masked keys
    g = jax.grad(lambda x: losses.attention_kd_loss(t, x, keys))(s)
    assert float(jnp.abs(g * ~keys[None, :, None, None, :]).max()) == 0.0


def test_query_mask_excludes_rows():
    t = jnp.array([[0.5, 0.5], [0.9, 0.1]]).reshape(1, 1, 1, 2, 2)
    s = jnp.array([[0.5, 0.5], [0.1, 0.9]]).reshape(1, 1, 1, 2, 2)
    keys = jnp.ones((1, 2), bool)
    assert float(losses.attention_kd_loss(t, s, keys, query_mask=jnp.array([[True, False]]))) == pytest.approx(
        0.0, abs=1e-7)
    assert float(losses.attention_kd_loss(t, s, keys)) > 0.5


@pytest.fixture(scope="module")
def pi05():
    d = FIXTURES / "pi05"
    cfg = ModelConfig.from_fixture(d / "config.json")
    model, params = load_model(d / "params", config=cfg)
    io = dict(np.load(d / "io.npz"))
    return cfg, model, params, parity.fixture_observation(io, cfg), io


def _attn(model, params, obs, io, layers, queries="action"):
    f = jax.jit(lambda p: model.apply({"params": p}, obs, io["x_t"], io["time"], attn_layers=layers,
                                       attn_queries=queries, method=Pi0.forward))
    return f(params)


def test_attention_kd_zero_for_identity_student_and_positive_for_shallow(pi05):
    cfg, model, params, obs, io = pi05
    v_t, a_t, prefix_mask = _attn(model, params, obs, io, (10,))
    assert a_t.shape == (1, 2, cfg.llm.num_heads, cfg.action_horizon, cfg.prefix_len + cfg.suffix_len)
    np.testing.assert_allclose(np.asarray(a_t).sum(-1), 1.0, atol=1e-5)
    n_p = prefix_mask.shape[1]
    same = student_params(params, list(range(18)))
    _, a_s, _ = _attn(model, same, obs, io, (10,))
    assert float(losses.attention_kd_loss(a_t[..., :n_p], a_s[..., :n_p], prefix_mask)) == pytest.approx(0.0, abs=1e-6)

    shallow = Pi0(cfg.with_depth(6))
    sp = student_params(params, [0, 3, 7, 10, 14, 17])
    _, a_s6, _ = _attn(shallow, sp, obs, io, (3,))
    kd = float(losses.attention_kd_loss(a_t[..., :n_p], a_s6[..., :n_p], prefix_mask))
    assert kd > 1e-3


def test_captured_rows_equal_full_attention_rows(pi05):
    """'action' capture returns exactly the last-H rows of the all-token capture, at the requested layer only."""
    cfg, model, params, obs, io = pi05
    _, a_act, _ = _attn(model, params, obs, io, (2, 9))
    _, a_all, _ = _attn(model, params, obs, io, (9,), "all")
    np.testing.assert_allclose(np.asarray(a_act[1]), np.asarray(a_all[0, :, :, -cfg.action_horizon:]), atol=1e-6)
    assert not np.allclose(np.asarray(a_act[0]), np.asarray(a_act[1]), atol=1e-3)
