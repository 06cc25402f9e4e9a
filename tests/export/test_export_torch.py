"""PyTorch export: state-dict names, strict conversion, parity with JAX (openpi fixtures and students)."""
import dataclasses
import functools
import json
import pathlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shallow_pi_jax import export_torch
from shallow_pi_jax.checkpoint import openpi_params
from shallow_pi_jax.export import convert
from shallow_pi_jax.export import torch_model as tm
from shallow_pi_jax.models.config import GemmaConfig, ModelConfig, SiglipConfig

pytestmark = [pytest.mark.slow, pytest.mark.torch]

ROOT = pathlib.Path(__file__).resolve().parents[2]
STUDENT_LAYERS = [0, 3, 7, 10, 14, 17]


@functools.cache
def load_fixture(fixture_dir):
    cfg = ModelConfig.from_fixture(fixture_dir / "config.json")
    flat = openpi_params.flatten_params(openpi_params.restore_params(fixture_dir / "params"))
    io = np.load(fixture_dir / "io.npz")
    obs = {"images": {k: io[f"images.{k}"] for k in cfg.image_keys},
           "image_masks": {k: io[f"image_masks.{k}"] for k in cfg.image_keys},
           "state": io["state"], "tokenized_prompt": io["tokenized_prompt"],
           "tokenized_prompt_mask": io["tokenized_prompt_mask"]}
    return cfg, flat, io, obs


def torch_model(cfg, flat, dtype=torch.float32):
    return tm.load_state(tm.Pi0Torch(cfg), convert.convert_params(flat, cfg)).to(dtype).eval().requires_grad_(False)


def openpi_keys(fixture_dir):
    rows = [line.split("\t") for line in (fixture_dir / "torch" / "state_dict_keys.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    return {k: tuple(json.loads(s.replace("(", "[").replace(",)", "]").replace(")", "]"))) for k, s, _ in rows}


def test_state_dict_names_and_shapes_are_openpis(fixture_dir):
    cfg = ModelConfig.from_fixture(fixture_dir / "config.json")
    with torch.device("meta"):
        sd = tm.Pi0Torch(cfg).state_dict()
    want = openpi_keys(fixture_dir)
    assert {k: tuple(v.shape) for k, v in sd.items() if k != tm.TIED_KEY} == want
    # The tied embedding is a state-dict key of openpi's model too, just not stored twice.
    assert tuple(sd[tm.TIED_KEY].shape) == want[tm.TIED_STORED_AS]


def test_converted_tensors_equal_openpis_file(fixture_dir):
    cfg, flat, _, _ = load_fixture(fixture_dir)
    ours = convert.convert_params(flat, cfg)
    ref = load_file(str(fixture_dir / "torch" / "model.safetensors"))
    assert set(ours) == set(ref)
    for k in ref:
        assert ours[k].shape == ref[k].shape, k
        assert ours[k].dtype == ref[k].dtype, k
        if k == tm.UNUSED_KEY:  # random in openpi's file, never read; we write zeros
            assert not ours[k].any()
        else:
            assert torch.equal(ours[k], ref[k]), k
    # openpi's own file loads strictly into our model.
    tm.load_state(tm.Pi0Torch(cfg), ref)


def test_velocity_and_sampling_match_jax_fixture(fixture_dir):
    cfg, flat, io, obs = load_fixture(fixture_dir)
    model = torch_model(cfg, flat)
    v_t = model.velocity(obs, io["x_t"], io["time"]).numpy()
    assert np.abs(v_t - io["v_t"]).max() <= 1e-5
    loss = model.compute_loss(obs, io["actions"], io["noise"], io["time"]).numpy()
    assert np.abs(loss - io["loss"]).max() <= 1e-5
    actions = model.sample_actions(obs, noise=io["sample_noise"], num_steps=int(io["num_steps"])).numpy()
    assert np.abs(actions - io["sample_actions"]).max() <= 1e-4
    # the cached path gives the same velocity as the joint pass at the first sampling step
    k, v, pmask = model.prefix_cache(*model._obs_parts(obs))
    v0 = model.denoise_step(torch.as_tensor(obs["state"]), k, v, pmask, torch.as_tensor(io["sample_noise"]),
                            torch.ones(2)).numpy()
    assert np.abs(v0 - io["sample_v_traj"][0]).max() <= 1e-5


def test_euler_schedule_is_openpis():
    io = np.load(ROOT / "tests/fixtures/openpi_tiny/pi0/io.npz")
    times = [t for t, _ in tm.euler_schedule(int(io["num_steps"]))]
    np.testing.assert_array_equal(np.float32(times), io["sample_times"])
    with pytest.raises(ValueError, match="num_steps"):
        tm.euler_schedule(0)


@functools.cache
def student(fixture_dir):
    """(config, flat params) of the 6-layer student of a fixture teacher, via distill.student_init."""
    from shallow_pi_jax.training.student_init import student_params

    cfg, flat, _, _ = load_fixture(fixture_dir)
    params = student_params(openpi_params.unflatten_params(flat), STUDENT_LAYERS)
    return cfg.with_depth(len(STUDENT_LAYERS)), openpi_params.flatten_params(params)


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.1), (torch.float16, 0.015)])
def test_half_precision_sampling_stays_close(dtype, tol):
    # bf16 keeps 8 bits of mantissa, fp16 11: over 6 layers x 10 steps the actions (|a| up to ~5)
    # moved by at most 0.03 (bf16) and 0.004 (fp16) here; tolerances are ~3x that.
    fx = ROOT / "tests/fixtures/openpi_tiny/pi05"
    _, _, io, obs = load_fixture(fx)
    cfg, flat = student(fx)
    ref = torch_model(cfg, flat).sample_actions(obs, noise=io["sample_noise"]).numpy()
    half = torch_model(cfg, flat, dtype)
    assert half.paligemma_with_expert.paligemma.lm_head.weight.dtype == dtype
    got = half.sample_actions(obs, noise=io["sample_noise"]).numpy()
    assert np.isfinite(got).all()
    err = np.abs(got - ref).max()
    assert 0 < err <= tol, err


def test_converter_is_strict():
    fx = ROOT / "tests/fixtures/openpi_tiny/pi05"
    cfg, flat, _, _ = load_fixture(fx)
    missing = {k: v for k, v in flat.items() if k != "time_mlp_in/bias"}
    with pytest.raises(ValueError, match=r"1 missing: time_mlp_in/bias"):
        convert.convert_params(missing, cfg)
    extra = {**flat, "PaliGemma/llm/extra/w": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match=r"1 unexpected: PaliGemma/llm/extra/w"):
        convert.convert_params(extra, cfg)
    bad = dict(flat)
    q = "PaliGemma/llm/layers/attn/q_einsum_1/w"
    bad[q] = flat[q][:, :, :-1]
    with pytest.raises(ValueError, match=r"wrong shape: PaliGemma/llm/layers/attn/q_einsum_1/w"):
        convert.convert_params(bad, cfg)
    # a π0 tree is not a π0.5 tree
    with pytest.raises(ValueError, match="missing"):
        convert.convert_params(flat, dataclasses.replace(cfg, pi05=False))
    # and a file with a wrong key does not load
    tensors = convert.convert_params(flat, cfg)
    tensors["not.a.key"] = tensors.pop("time_mlp_in.bias")
    with pytest.raises(ValueError, match=r"(?s)missing: time_mlp_in.bias.*unexpected: not.a.key"):
        tm.load_state(tm.Pi0Torch(cfg), tensors)


def _random_jax_params(cfg, seed):
    """Random params for `cfg` in the JAX model's layout, without compiling its init."""
    import jax

    from shallow_pi_jax.models.observation import dummy_observation
    from shallow_pi_jax.models.pi0 import Pi0

    model = Pi0(cfg)
    obs = dummy_observation(cfg, 1)
    x = np.zeros((1, cfg.action_horizon, cfg.action_dim), np.float32)
    abstract = jax.eval_shape(lambda r: model.init(r, obs, x, np.ones(1, np.float32), method=Pi0.velocity),
                              jax.random.key(seed))["params"]
    shapes = {k: tuple(v.shape) for k, v in openpi_params.flatten_params(abstract).items()}
    assert shapes == convert.expected_jax_shapes(cfg)  # the converter's view of the tree is the model's
    g = np.random.default_rng(seed)
    # Every leaf random and non-zero (zero-initialised norms and ada-norm Dense would hide layout bugs).
    return model, {k: (0.3 * g.standard_normal(v)).astype(np.float32) for k, v in shapes.items()}


def _random_obs(cfg, b, seed):
    g = np.random.default_rng(seed)
    mask = np.arange(cfg.max_token_len)[None] < np.array([[3], [cfg.max_token_len - 1]][:b])
    return {"images": {k: g.uniform(-1, 1, (b, *cfg.image_size, 3)).astype(np.float32) for k in cfg.image_keys},
            "image_masks": {k: np.array([True, i == 0][:b]) for i, k in enumerate(cfg.image_keys)},
            "state": g.standard_normal((b, cfg.action_dim)).astype(np.float32),
            "tokenized_prompt": g.integers(0, cfg.vocab_size, (b, cfg.max_token_len)).astype(np.int32),
            "tokenized_prompt_mask": mask}


def test_other_sizes_match_jax():
    """Sizes unlike the fixtures in every way openpi's converter trips on: width (24 / 16) !=
    heads x head_dim (20), kv heads == heads (openpi then stores one fused qkv_einsum), 2 cameras,
    3 layers, a 3-step schedule."""
    import jax

    from shallow_pi_jax.models.pi0 import Pi0

    pi05, num_heads, num_kv_heads, head_dim = True, 2, 2, 10
    g = lambda w, m: GemmaConfig(width=w, depth=3, mlp_dim=m, num_heads=num_heads,  # noqa: E731
                                 num_kv_heads=num_kv_heads, head_dim=head_dim)
    cfg = ModelConfig(pi05=pi05, llm=g(24, 40), expert=g(16, 24),
                      siglip=SiglipConfig(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=(8, 8)),
                      vocab_size=50, action_dim=6, action_horizon=4, max_token_len=7,
                      image_keys=("base_0_rgb", "left_wrist_0_rgb"), image_size=(16, 16))
    jmodel, flat = _random_jax_params(cfg, seed=3)
    assert ("PaliGemma/llm/layers/attn/qkv_einsum/w" in flat) == (num_kv_heads == num_heads)
    shapes = {k: v.shape for k, v in flat.items()}
    inferred = ModelConfig.from_param_shapes(shapes, action_horizon=4, max_token_len=7, image_keys=cfg.image_keys)
    assert inferred == cfg
    model = torch_model(cfg, flat)
    obs = _random_obs(cfg, 2, seed=4)
    noise = np.random.default_rng(5).standard_normal((2, 4, 6)).astype(np.float32)
    t = np.array([0.3, 0.9], np.float32)
    params = {"params": openpi_params.unflatten_params(flat)}
    # Op by op, not jitted: XLA's fusions alone move this v_t by ~1e-5 here (weights are large).
    v_jax = jmodel.apply(params, obs, noise, t, method=Pi0.velocity)
    assert np.abs(model.velocity(obs, noise, t).numpy() - np.asarray(v_jax)).max() <= 1e-5
    a_jax = jax.jit(lambda p, o: jmodel.apply(p, jax.random.key(0), o, num_steps=3, noise=noise,
                                              method=Pi0.sample_actions))(params, obs)
    assert np.abs(model.sample_actions(obs, noise=noise, num_steps=3).numpy() - np.asarray(a_jax)).max() <= 1e-4


def test_compacted_prefix_matches_jax_and_the_full_prefix():
    """sample_actions drops the camera masked for the whole batch and the prompt padding past the
    bucket, as the JAX CompactPi0 does: same actions as openpi's prefix, in both frameworks."""
    import jax

    from shallow_pi_jax.models.pi0 import CompactPi0, Pi0
    from shallow_pi_jax.models.prefix import PrefixPlan
    from shallow_pi_jax.serve.testing import tiny_config

    cfg = tiny_config(depth=2, max_token_len=80)
    jmodel, flat = _random_jax_params(cfg, seed=6)
    model = torch_model(cfg, flat)
    g = np.random.default_rng(7)
    obs = {"images": {k: g.uniform(-1, 1, (2, *cfg.image_size, 3)).astype(np.float32) for k in cfg.image_keys},
           "image_masks": {"base_0_rgb": np.array([True, True]), "left_wrist_0_rgb": np.array([True, False]),
                           "right_wrist_0_rgb": np.array([False, False])},
           "state": g.standard_normal((2, cfg.action_dim)).astype(np.float32),
           "tokenized_prompt": g.integers(1, cfg.vocab_size, (2, 80)).astype(np.int32),
           "tokenized_prompt_mask": np.arange(80)[None] < np.array([[5], [40]])}
    noise = g.standard_normal((2, cfg.action_horizon, cfg.action_dim)).astype(np.float32)
    plan = model.compact_plan(obs)
    assert plan == PrefixPlan(("base_0_rgb", "left_wrist_0_rgb"), 64)
    assert model.prefix_cache(*model._obs_parts(obs, plan))[2].shape[1] == 2 * cfg.tokens_per_image + 64
    full = model.sample_actions(obs, noise=noise, num_steps=3, compact_prefix=False).numpy()
    got = model.sample_actions(obs, noise=noise, num_steps=3).numpy()
    assert np.abs(got - full).max() <= 1e-5 * max(1.0, np.abs(full).max())
    assert np.abs(full).max() > 1e-2
    params = {"params": openpi_params.unflatten_params(flat)}
    for jm in (jmodel, CompactPi0(cfg, plan=plan)):
        a_jax = jax.jit(lambda p, o, m=jm: m.apply(p, None, o, num_steps=3, noise=noise,
                                                   method=Pi0.sample_actions))(params, obs)
        assert np.abs(got - np.asarray(a_jax)).max() <= 1e-4


def test_student_export_matches_jax_student(fixture_dir):
    import jax

    from shallow_pi_jax.models.pi0 import Pi0

    cfg, flat, io, obs = load_fixture(fixture_dir)
    scfg, student_flat = student(fixture_dir)
    model = torch_model(scfg, student_flat)
    assert len(model._llm.layers) == len(model._expert.layers) == 6
    # layer j of the student is teacher layer STUDENT_LAYERS[j], in both stacks
    teacher_sd = convert.convert_params(flat, cfg)
    for j, i in enumerate(STUDENT_LAYERS):
        for stack in ("paligemma.model.language_model", "gemma_expert.model"):
            key = f"paligemma_with_expert.{stack}.layers.{{}}.mlp.down_proj.weight"
            assert torch.equal(model.state_dict()[key.format(j)], teacher_sd[key.format(i)])
    jmodel = Pi0(scfg)
    params = {"params": openpi_params.unflatten_params(student_flat)}
    v_jax = np.asarray(jmodel.apply(params, obs, io["x_t"], io["time"], method=Pi0.velocity))
    assert np.abs(model.velocity(obs, io["x_t"], io["time"]).numpy() - v_jax).max() <= 1e-5
    a_jax = np.asarray(jmodel.apply(params, jax.random.key(0), obs, num_steps=10, noise=io["sample_noise"],
                                    method=Pi0.sample_actions))
    a_torch = model.sample_actions(obs, noise=io["sample_noise"], num_steps=10).numpy()
    assert np.abs(a_torch - a_jax).max() <= 1e-4
    # a student is a different function from its teacher
    assert np.abs(a_torch - io["sample_actions"]).max() > 1e-2


def test_export_torch_cli(tmp_path):

    fx = ROOT / "tests/fixtures/openpi_tiny/pi05"
    cfg, flat, io, obs = load_fixture(fx)
    # a student checkpoint laid out like python -m shallow_pi_jax.make_student writes it
    ckpt = tmp_path / "student"
    openpi_params.save_params(openpi_params.unflatten_params(student(fx)[1]), ckpt / "params")
    (ckpt / "layer_map.json").write_text(json.dumps({"teacher_depth": 18, "student_depth": 6,
                                                     "indices": STUDENT_LAYERS, "strategy": "uniform"}))
    (ckpt / "assets" / "libero").mkdir(parents=True)
    norm = {"norm_stats": {"state": {"mean": [0.0], "std": [1.0], "q01": [-1.0], "q99": [1.0]}}}
    (ckpt / "assets" / "libero" / "norm_stats.json").write_text(json.dumps(norm))

    with pytest.raises(ValueError, match="--action-horizon"):
        export_torch.main(["--params", str(ckpt / "params"), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()

    out = tmp_path / "export"
    export_torch.main(["--params", str(ckpt / "params"), "--out", str(out), "--action-horizon", "10"])
    assert sorted(p.name for p in out.iterdir()) == ["assets", "config.json", "model.safetensors"]
    assert json.loads((out / "assets/libero/norm_stats.json").read_text()) == norm
    conf = json.loads((out / "config.json").read_text())
    assert conf["layer_map"]["indices"] == STUDENT_LAYERS
    assert conf["model"]["llm"]["depth"] == conf["model"]["expert"]["depth"] == 6
    assert conf["pi05"] is True and conf["action_horizon"] == 10 and conf["action_dim"] == 32
    assert conf["model"]["max_token_len"] == 200  # π0.5 default, = the fixture's
    model = tm.load_pretrained(out)
    assert model.config == cfg.with_depth(6)
    sd = load_file(str(out / "model.safetensors"))
    ref = load_file(str(fx / "torch/model.safetensors"))
    assert set(sd) == {k for k in ref if ".layers." not in k or "vision_model" in k} | {
        k.replace(f".layers.{i}.", f".layers.{j}.") for k in ref for j, i in enumerate(STUDENT_LAYERS)
        if f".layers.{i}." in k and "vision_model" not in k}
    # existing output is not overwritten without --overwrite
    with pytest.raises(ValueError, match="--out: .* exists"):
        export_torch.main(["--params", str(ckpt / "params"), "--out", str(out), "--action-horizon", "10"])
    # bf16 export, config from the fixture json
    out16 = tmp_path / "bf16"
    export_torch.main(["--params", str(fx / "params"), "--out", str(out16), "--dtype", "bfloat16",
                       "--config", str(fx / "config.json")])
    m16 = tm.load_pretrained(out16)
    assert m16.dtype == torch.bfloat16 and json.loads((out16 / "config.json").read_text())["layer_map"] is None
    a = tm.load_pretrained(out16, dtype="float32").sample_actions(obs, noise=io["sample_noise"]).numpy()
    assert np.abs(a - io["sample_actions"]).max() <= 0.15  # bf16-rounded weights, fp32 math
