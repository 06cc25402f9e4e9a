"""Attention mask, positions and time embedding: hand-built cases and openpi's recorded values."""
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES

from shallow_pi_jax.models import masks


def test_prefix_lm_mask_by_hand():
    # 3 prefix tokens (bidirectional, last one padding), then a 3-token suffix block starting a new block,
    # with a second block starting at its 2nd token.
    valid = jnp.array([[1, 1, 0, 1, 1, 1]], bool)
    ar = jnp.array([0, 0, 0, 1, 1, 0], bool)
    m = np.asarray(masks.make_attn_mask(valid, ar))[0].astype(int)
    expected = np.array([
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],  # padding attends to nothing
        [1, 1, 0, 1, 0, 0],
        [1, 1, 0, 1, 1, 1],
        [1, 1, 0, 1, 1, 1],
    ])
    np.testing.assert_array_equal(m, expected)


def test_causal_and_full_special_cases():
    valid = jnp.ones((1, 4), bool)
    causal = np.asarray(masks.make_attn_mask(valid, jnp.ones(4, bool)))[0]
    np.testing.assert_array_equal(causal, np.tril(np.ones((4, 4), bool)))
    full = np.asarray(masks.make_attn_mask(valid, jnp.zeros(4, bool)))[0]
    assert full.all()


def test_positions_skip_padding():
    valid = jnp.array([[1, 1, 0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(np.asarray(masks.positions_from_mask(valid))[0], [0, 1, 1, 1, 2, 3])


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_mask_positions_and_time_embedding_match_openpi(variant):
    io = np.load(FIXTURES / variant / "io.npz")
    valid = np.concatenate([io["prefix_mask"], io["suffix_mask"]], axis=1)
    ar = np.concatenate([io["prefix_ar_mask"], io["suffix_ar_mask"]])
    np.testing.assert_array_equal(np.asarray(masks.make_attn_mask(jnp.asarray(valid), jnp.asarray(ar))),
                                  io["attn_mask"])
    np.testing.assert_array_equal(np.asarray(masks.positions_from_mask(jnp.asarray(valid))), io["positions"])
    emb = masks.posemb_sincos(jnp.asarray(io["time"]), io["time_posemb"].shape[-1])
    np.testing.assert_allclose(np.asarray(emb), io["time_posemb"], atol=1e-6, rtol=0)


def test_odd_time_embedding_width_is_rejected():
    with pytest.raises(ValueError, match="even"):
        masks.posemb_sincos(jnp.zeros(2), 7)
