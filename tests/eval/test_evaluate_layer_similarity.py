"""eval/residual_stream (python -m shallow_pi_jax.layer_similarity): the layer-by-layer pass is the model's;
an identity layer scores cos 1 and update 0; the read-out after every layer is the model's own velocity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shallow_pi_jax.eval import residual_stream
from shallow_pi_jax.models.observation import dummy_observation
from shallow_pi_jax.models.pi0 import Pi0
from shallow_pi_jax.serve.testing import random_params, tiny_config

pytestmark = pytest.mark.slow


def _batch(cfg, b=2, seed=0):
    rng = np.random.default_rng(seed)
    obs = dummy_observation(cfg, b, with_actions=True)
    for cam in cfg.image_keys:
        obs["images"][cam] = rng.uniform(-1, 1, obs["images"][cam].shape).astype(np.float32)
    obs["image_masks"][cfg.image_keys[-1]][:] = False
    obs["tokenized_prompt"] = rng.integers(0, cfg.vocab_size, obs["tokenized_prompt"].shape).astype(np.int32)
    obs["tokenized_prompt_mask"][:, 5:] = False
    obs["actions"] = rng.normal(size=obs["actions"].shape).astype(np.float32)
    return obs


@pytest.mark.parametrize("pi05", [True, False])
def test_layer_by_layer_pass_matches_velocity(pi05):
    cfg = tiny_config(depth=3, pi05=pi05)
    params = random_params(cfg, seed=2)
    batch = _batch(cfg)
    obs = {k: v for k, v in batch.items() if k != "actions"}
    x_t, t = batch["actions"], jnp.array([0.3, 0.9], jnp.float32)
    pres, sufs, _, v_t = jax.jit(lambda p: residual_stream.hidden_states(cfg, p, obs, x_t, t))(params)
    want = jax.jit(lambda p: Pi0(cfg).apply({"params": p}, obs, x_t, t, method=Pi0.velocity))(params)
    assert pres.shape[0] == sufs.shape[0] == cfg.depth + 1
    np.testing.assert_allclose(v_t, want, atol=1e-5)


def test_identity_layer_has_cosine_one_and_others_do_not(tmp_path):
    cfg = tiny_config(depth=3)
    params = random_params(cfg, seed=4)
    layers = params["PaliGemma"]["llm"]["layers"]
    # Zero layer 1's output projections (both experts): its residual branches add nothing.
    for name in ("attn_vec_einsum", "attn_vec_einsum_1"):
        layers["attn"][name]["w"][1] = 0
    for name in ("mlp", "mlp_1"):
        layers[name]["linear"][1] = 0
    res = residual_stream.similarity(cfg, params, [_batch(cfg)], times=(0.1, 1.0))
    assert len(res["backbone"]) == 3 and len(res["expert"]) == 2 and res["frames"] == 2
    np.testing.assert_allclose(res["backbone"][1], 1.0, atol=1e-6)
    np.testing.assert_allclose([e[1] for e in res["expert"]], 1.0, atol=1e-6)
    assert res["backbone"][0] < 0.999 and res["expert"][0][0] < 0.999
    # The expert's similarity depends on t; the backbone's cannot (the prefix never sees the suffix).
    assert abs(res["expert"][0][2] - res["expert"][1][2]) > 1e-6
    # update size: 0 for the identity layer, > 0 elsewhere; the same layer in both stacks
    np.testing.assert_allclose(res["backbone_update"][1], 0.0, atol=1e-6)
    np.testing.assert_allclose([e[1] for e in res["expert_update"]], 0.0, atol=1e-6)
    assert res["backbone_update"][0] > 1e-3 and min(e[0] for e in res["expert_update"]) > 1e-3
    # cos(h_l, h_L): 1 at l = L, and layer 1 changes nothing, so h_1 and h_2 are equally far from h_L
    assert len(res["backbone_to_final"]) == 4 and len(res["expert_to_final"][0]) == 4
    np.testing.assert_allclose([res["backbone_to_final"][3]] + [e[3] for e in res["expert_to_final"]], 1.0, atol=1e-6)
    np.testing.assert_allclose(res["backbone_to_final"][1], res["backbone_to_final"][2], atol=1e-6)
    # the read-out after all layers is v_t itself; after 1 and 2 layers the same (layer 1 is identity)
    for e in res["expert_readout"]:
        assert len(e) == 4 and abs(e[3]) < 1e-5 and e[0] > 1e-3
        np.testing.assert_allclose(e[1], e[2], rtol=1e-5)
    table = residual_stream.format_table(res)
    assert table.count("\n") == 2 + 3 and "expert cos t=0.1" in table and "readout err t=1" in table
    residual_stream.plot(res, tmp_path / "layers.png", "tiny")
    assert (tmp_path / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
