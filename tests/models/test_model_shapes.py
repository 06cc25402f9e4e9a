"""Real-size param trees (checked with jax.eval_shape only) and clear errors on bad input."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import FIXTURES

from shallow_pi_jax.checkpoint import openpi_params
from shallow_pi_jax.checkpoint.policy_dir import load_model
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.observation import dummy_observation
from shallow_pi_jax.models.params import param_shapes
from shallow_pi_jax.models.pi0 import Pi0


def openpi_shapes(c: ModelConfig) -> dict:
    """openpi's tree written out from DESIGN §2, independently of our modules."""
    L, D, E, F, FE = c.depth, c.llm.width, c.expert.width, c.llm.mlp_dim, c.expert.mlp_dim
    N, K, H = c.llm.num_heads, c.llm.num_kv_heads, c.llm.head_dim
    s = c.siglip
    W, V, M, P = s.width, s.depth, s.mlp_dim, s.num_heads
    hd = W // P
    img = "PaliGemma/img/Transformer/encoderblock/"
    t = {
        "PaliGemma/img/embedding/kernel": (*s.patch_size, 3, W), "PaliGemma/img/embedding/bias": (W,),
        "PaliGemma/img/pos_embedding": (1, c.tokens_per_image, W),
        "PaliGemma/img/Transformer/encoder_norm/scale": (W,), "PaliGemma/img/Transformer/encoder_norm/bias": (W,),
        "PaliGemma/img/head/kernel": (W, D), "PaliGemma/img/head/bias": (D,),
        img + "MlpBlock_0/Dense_0/kernel": (V, W, M), img + "MlpBlock_0/Dense_0/bias": (V, M),
        img + "MlpBlock_0/Dense_1/kernel": (V, M, W), img + "MlpBlock_0/Dense_1/bias": (V, W),
        img + "MultiHeadDotProductAttention_0/out/kernel": (V, P, hd, W),
        img + "MultiHeadDotProductAttention_0/out/bias": (V, W),
        "PaliGemma/llm/embedder/input_embedding": (c.vocab_size, D),
        "PaliGemma/llm/final_norm/scale": (D,),
        "action_in_proj/kernel": (c.action_dim, E), "action_in_proj/bias": (E,),
        "action_out_proj/kernel": (E, c.action_dim), "action_out_proj/bias": (c.action_dim,),
    }
    for ln in ("LayerNorm_0", "LayerNorm_1"):
        t[img + ln + "/scale"] = t[img + ln + "/bias"] = (V, W)
    for p in ("query", "key", "value"):
        t[img + f"MultiHeadDotProductAttention_0/{p}/kernel"] = (V, W, P, hd)
        t[img + f"MultiHeadDotProductAttention_0/{p}/bias"] = (V, P, hd)
    for sfx, width, mlp in (("", D, F), ("_1", E, FE)):
        t[f"PaliGemma/llm/layers/attn/q_einsum{sfx}/w"] = (L, N, width, H)
        t[f"PaliGemma/llm/layers/attn/kv_einsum{sfx}/w"] = (L, 2, K, width, H)
        t[f"PaliGemma/llm/layers/attn/attn_vec_einsum{sfx}/w"] = (L, N, H, width)
        t[f"PaliGemma/llm/layers/mlp{sfx}/gating_einsum"] = (L, 2, width, mlp)
        t[f"PaliGemma/llm/layers/mlp{sfx}/linear"] = (L, mlp, width)
    norms = ["pre_attention_norm_1", "pre_ffw_norm_1"]
    t["PaliGemma/llm/layers/pre_attention_norm/scale"] = t["PaliGemma/llm/layers/pre_ffw_norm/scale"] = (L, D)
    if c.pi05:
        for n in norms:
            t[f"PaliGemma/llm/layers/{n}/Dense_0/kernel"] = (L, E, 3 * E)
            t[f"PaliGemma/llm/layers/{n}/Dense_0/bias"] = (L, 3 * E)
        t["PaliGemma/llm/final_norm_1/Dense_0/kernel"] = (E, 3 * E)
        t["PaliGemma/llm/final_norm_1/Dense_0/bias"] = (3 * E,)
        heads = {"time_mlp_in": (E, E), "time_mlp_out": (E, E)}
    else:
        for n in norms:
            t[f"PaliGemma/llm/layers/{n}/scale"] = (L, E)
        t["PaliGemma/llm/final_norm_1/scale"] = (E,)
        heads = {"state_proj": (c.action_dim, E), "action_time_mlp_in": (2 * E, E), "action_time_mlp_out": (E, E)}
    for name, (i, o) in heads.items():
        t[f"{name}/kernel"], t[f"{name}/bias"] = (i, o), (o,)
    return t


def fixture_paths(variant):
    lines = (FIXTURES / variant / "params_tree.txt").read_text().splitlines()
    return {ln.split("\t")[0] for ln in lines if ln and not ln.startswith("#")}


@pytest.mark.parametrize("pi05,total", [(False, 3_238_048_528), (True, 3_353_433_872)])
def test_real_size_tree_equals_openpi(pi05, total):
    cfg = ModelConfig.real(pi05=pi05)
    ours = {k: tuple(v.shape) for k, v in openpi_params.flatten_params(param_shapes(cfg)).items()}
    assert set(ours) == fixture_paths("pi05" if pi05 else "pi0")
    assert ours == openpi_shapes(cfg)
    assert sum(int(np.prod(s)) for s in ours.values()) == total


@pytest.mark.parametrize("variant", ["pi0", "pi05"])
def test_tiny_tree_equals_fixture_and_config_is_inferred(variant):
    stored = openpi_params.flatten_params(openpi_params.params_shapes(FIXTURES / variant / "params"))
    shapes = {k: tuple(v.shape) for k, v in stored.items()}
    from_json = ModelConfig.from_fixture(FIXTURES / variant / "config.json")
    inferred = ModelConfig.from_param_shapes(shapes, action_horizon=from_json.action_horizon,
                                             max_token_len=from_json.max_token_len)
    assert inferred == from_json
    assert openpi_shapes(from_json) == shapes


def test_fused_qkv_when_kv_heads_equal_heads():
    cfg = ModelConfig.from_fixture(FIXTURES / "pi0" / "config.json")
    mha = dataclasses.replace(cfg.llm, num_kv_heads=cfg.llm.num_heads)
    cfg = dataclasses.replace(cfg, llm=mha, expert=dataclasses.replace(cfg.expert, num_kv_heads=mha.num_heads))
    flat = openpi_params.flatten_params(param_shapes(cfg))
    assert flat["PaliGemma/llm/layers/attn/qkv_einsum/w"].shape == (cfg.depth, 3, 4, 64, 16)
    assert "PaliGemma/llm/layers/attn/q_einsum/w" not in flat
    inferred = ModelConfig.from_param_shapes({k: v.shape for k, v in flat.items()}, action_horizon=10, max_token_len=48)
    assert inferred.llm == cfg.llm and inferred.expert == cfg.expert


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig.from_fixture(FIXTURES / "pi0" / "config.json")
    return cfg, Pi0(cfg), param_shapes(cfg)


def _eval(model, params, obs, x):
    return jax.eval_shape(lambda: model.apply({"params": params}, obs, x, jnp.ones(x.shape[0]), method=Pi0.velocity))


@pytest.mark.parametrize("mutate,match", [
    (lambda o: o["images"].__setitem__("base_0_rgb", np.zeros((2, 112, 112, 3), np.float32)),
     r"images\['base_0_rgb'\]: expected shape \(2, 224, 224, 3\), got \(2, 112, 112, 3\)"),
    (lambda o: o["images"].pop("left_wrist_0_rgb"), "missing camera 'left_wrist_0_rgb'"),
    (lambda o: o.__setitem__("state", np.zeros((2, 8), np.float32)), r"state: expected shape \(2, 32\), got \(2, 8\)"),
    (lambda o: o.__setitem__("tokenized_prompt_mask", np.ones((2, 47), bool)),
     r"tokenized_prompt_mask: expected shape \(2, 48\), got \(2, 47\)"),
])
def test_bad_observation_names_field_expected_and_actual(tiny, mutate, match):
    cfg, model, params = tiny
    obs = dummy_observation(cfg, 2)
    mutate(obs)
    with pytest.raises(ValueError, match=match):
        _eval(model, params, obs, jnp.zeros((2, cfg.action_horizon, cfg.action_dim)))


def test_bad_action_dim(tiny):
    cfg, model, params = tiny
    with pytest.raises(ValueError, match=r"actions: expected shape \(2, 10, 32\), got \(2, 10, 7\)"):
        _eval(model, params, dummy_observation(cfg, 2), jnp.zeros((2, 10, 7)))


def test_checkpoint_of_another_architecture_is_rejected():
    pi05_cfg = ModelConfig.from_fixture(FIXTURES / "pi05" / "config.json")
    with pytest.raises(ValueError) as e:
        load_model(FIXTURES / "pi0" / "params", config=pi05_cfg)
    msg = str(e.value)
    assert "missing" in msg and "time_mlp_in/kernel" in msg
    assert "unexpected" in msg and "state_proj/kernel" in msg
    deeper = pi05_cfg.with_depth(9)
    with pytest.raises(ValueError,
                       match=r"PaliGemma/llm/layers/mlp/linear: expected shape \(9, 128, 64\), got \(18, 128, 64\)"):
        load_model(FIXTURES / "pi05" / "params", config=deeper)


def test_from_scratch_token_embedding_init_is_openpis():
    """openpi initialises the token table with std 0.01 (it is then scaled by sqrt(width))."""
    from shallow_pi_jax.models.params import init_params
    from shallow_pi_jax.training.recipes import demo_model

    table = init_params(demo_model(depth=2), jax.random.PRNGKey(0))["PaliGemma"]["llm"]["embedder"]["input_embedding"]
    assert table.shape == (512, 64)
    assert abs(float(jnp.std(table)) - 0.01) < 0.001
