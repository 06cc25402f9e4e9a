"""LoRA teachers: merged weights run exactly what openpi's LoRA forward computes, on disk and in memory.

The reference forward below is written from openpi's rule (models/lora.py), independently of
checkpoint/lora.py's merge: each adapted einsum adds
scale * einsum("out[B->L],rhs[A->L]->out", einsum("lhs,rhs[B->L]->out[B->L]", x, lora_a), lora_b),
and each feed-forward dot adds (x @ lora_a) @ lora_b. lora_b is random and non-zero (openpi inits it
to zero, which would make every check pass trivially).
"""
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from shallow_pi_jax import cli
from shallow_pi_jax import make_student as make_student_tool
from shallow_pi_jax.checkpoint import lora
from shallow_pi_jax.checkpoint import openpi_params as C
from shallow_pi_jax.checkpoint.layer_reader import ParamsReader
from shallow_pi_jax.checkpoint.policy_dir import load_model
from shallow_pi_jax.models import gemma
from shallow_pi_jax.models.config import GemmaConfig, ModelConfig, SiglipConfig
from shallow_pi_jax.models.params import param_shapes

LAYERS = "PaliGemma/llm/layers/"
# Ranks unlike openpi's and alpha != rank, so a missing or wrong scale cannot pass.
RANKS = {"": 3, "_1": 2}
ALPHAS = {3: 5.0, 2: 7.0}


def tiny(pi05: bool, kv_heads: int, depth: int = 2) -> ModelConfig:
    # kv_heads == num_heads makes openpi (and us) use the fused qkv_einsum; fewer, q_einsum + kv_einsum.
    return ModelConfig(
        pi05=pi05,
        llm=GemmaConfig(width=32, depth=depth, mlp_dim=48, num_heads=2, num_kv_heads=kv_heads, head_dim=8),
        expert=GemmaConfig(width=16, depth=depth, mlp_dim=24, num_heads=2, num_kv_heads=kv_heads, head_dim=8),
        siglip=SiglipConfig(width=16, depth=1, mlp_dim=32, num_heads=2, patch_size=(8, 8)),
        vocab_size=64, action_dim=6, action_horizon=4, max_token_len=6, image_keys=("base_0_rgb",),
        image_size=(16, 16))


def base_params(cfg, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    flat = _shapes(cfg)
    return {p: (rng.standard_normal(s.shape) / np.sqrt(s.shape[-2] if len(s.shape) >= 2 else 10)).astype(np.float32)
            for p, s in flat.items()}


@functools.lru_cache
def _shapes(cfg) -> dict:
    return C.flatten_params(param_shapes(cfg))  # traces the model: once per config


def add_lora(flat: dict, seed=1) -> dict:
    """flat + random lora_a / lora_b for every einsum and feed-forward weight of both experts."""
    rng = np.random.default_rng(seed)
    out = dict(flat)
    for p, w in flat.items():
        if not p.startswith(LAYERS):
            continue
        parent, name = p.rsplit("/", 1)
        if name == "w" and parent.rsplit("/", 1)[-1].removesuffix("_1").endswith("einsum"):
            a_path, b_path = f"{parent}/lora_a", f"{parent}/lora_b"
        elif name in ("gating_einsum", "linear"):
            a_path, b_path = f"{parent}/{name}_lora_a", f"{parent}/{name}_lora_b"
        else:
            continue
        r = RANKS["_1" if "_1/" in p else ""]
        shape_a, shape_b = w.shape[:-1] + (r,), w.shape[:-2] + (r, w.shape[-1])
        # An update about half the size of w: it moves the outputs by O(1), while float32 rounding
        # of the merged weights stays well inside the tolerance (this tiny random net amplifies it).
        out[a_path] = (rng.standard_normal(shape_a) / np.sqrt(w.shape[-2])).astype(np.float32)
        out[b_path] = (0.5 * rng.standard_normal(shape_b) / np.sqrt(r)).astype(np.float32)
    return out


def lora_interceptor(next_fun, args, kwargs, context):
    """openpi's LoRA forward on top of our modules, reading lora leaves from the module's params."""
    module = context.module
    if context.method_name != "__call__":
        return next_fun(*args, **kwargs)
    if isinstance(module, gemma.Einsum) and module.has_variable("params", "lora_a"):
        eqn, x = args
        lhs, rest = eqn.split(",")
        rhs, out = rest.split("->")
        a_axis, b_axis = rhs[-2], rhs[-1]
        eqn_a = f"{lhs},{rhs.replace(b_axis, 'L')}->{out.replace(b_axis, 'L')}"
        eqn_b = f"{out.replace(b_axis, 'L')},{rhs.replace(a_axis, 'L')}->{out}"
        a, b = module.get_variable("params", "lora_a"), module.get_variable("params", "lora_b")
        rank = a.shape[-1]
        return next_fun(*args, **kwargs) + ALPHAS[rank] / rank * jnp.einsum(eqn_b, jnp.einsum(eqn_a, x, a), b)
    if isinstance(module, gemma.FeedForward) and module.has_variable("params", "linear_lora_a"):
        (x,) = args
        get = lambda n: module.get_variable("params", n)  # noqa: E731

        def dot(x, w, a, b):
            return x @ w + (x @ a) @ b

        g, ga, gb = get("gating_einsum"), get("gating_einsum_lora_a"), get("gating_einsum_lora_b")
        h = nn.gelu(dot(x, g[0], ga[0], gb[0]), approximate=True) * dot(x, g[1], ga[1], gb[1])
        return dot(h, get("linear"), get("linear_lora_a"), get("linear_lora_b"))
    return next_fun(*args, **kwargs)


def llm_runner(cfg, seed=2, intercept=False):
    """PaliGemma/llm (every adapted leaf lives there) on fixed random prefix and suffix tokens,
    as one compiled function of a flat params dict."""
    rng = np.random.default_rng(seed)
    b, tp, ts = 2, 7, 5
    xs = [rng.normal(size=(b, tp, cfg.llm.width)).astype(np.float32),
          rng.normal(size=(b, ts, cfg.expert.width)).astype(np.float32)]
    positions = np.broadcast_to(np.arange(tp + ts), (b, tp + ts))
    mask = np.broadcast_to(np.tril(np.ones((tp + ts, tp + ts), bool)), (b, tp + ts, tp + ts))
    cond = [None, rng.normal(size=(b, cfg.expert.width)).astype(np.float32)] if cfg.pi05 else None
    model = gemma.GemmaMixture((cfg.llm, cfg.expert), cfg.vocab_size, adarms=cfg.pi05)

    def run(params):
        with nn.intercept_methods(lora_interceptor if intercept else lambda f, a, k, c: f(*a, **k)):
            (prefix, suffix), _, _ = model.apply({"params": params}, xs, positions, mask, adarms_cond=cond)
        return jnp.concatenate([prefix.reshape(-1), suffix.reshape(-1)])

    compiled = jax.jit(run)
    return lambda flat: np.asarray(compiled(C.unflatten_params(flat)["PaliGemma"]["llm"]))


@pytest.mark.parametrize("pi05,kv_heads", [(True, 1), (False, 2)], ids=["pi05-q-kv", "pi0-qkv"])
def test_merged_model_equals_lora_forward(pi05, kv_heads):
    cfg = tiny(pi05, kv_heads)
    flat = add_lora(base_params(cfg))
    pairs = lora.find_pairs({p: x.shape for p, x in flat.items()})
    expected = {"q_einsum", "kv_einsum"} if kv_heads == 1 else {"qkv_einsum"}
    assert {p.split("/")[-2].removesuffix("_1") for p in pairs if p.endswith("/w")} == expected | {"attn_vec_einsum"}
    assert len(pairs) == 2 * (len(expected) + 3)  # + attn_vec, gating, linear; both experts
    ref = llm_runner(cfg, intercept=True)(flat)
    merged, n = lora.merge_lora(flat, alpha=ALPHAS)
    assert n == len(pairs) and not any(lora.is_lora_leaf(p) for p in merged)
    C.validate_params(C.unflatten_params(merged), C.unflatten_params(_shapes(cfg)), check_dtype=True)
    run = llm_runner(cfg)
    got = run(merged)
    base = run({p: x for p, x in flat.items() if not lora.is_lora_leaf(p)})
    tol = 1e-5 * max(1.0, np.max(np.abs(ref)))
    assert np.max(np.abs(got - ref)) <= tol
    assert np.max(np.abs(base - ref)) > 100 * tol  # the LoRA update matters to the output


def test_attn_vec_update_sums_lora_b_over_heads():
    """openpi's second einsum for attn_vec ('BTL,NLD->BTD') sums lora_b over its heads on its own."""
    rng = np.random.default_rng(0)
    w, a, b = rng.normal(size=(3, 4, 5, 6)), rng.normal(size=(3, 4, 5, 2)), rng.normal(size=(3, 4, 2, 6))
    path = "PaliGemma/llm/layers/attn/attn_vec_einsum"
    flat = {f"{path}/w": w.astype(np.float32), f"{path}/lora_a": a, f"{path}/lora_b": b}
    merged, _ = lora.merge_lora(flat, alpha=4.0)
    want = w + 2.0 * np.einsum("inhl,ild->inhd", a, b.sum(axis=1))
    np.testing.assert_allclose(merged[f"{path}/w"], want, rtol=0, atol=1e-6 * np.max(np.abs(want)))
    assert lora.delta_equation("BTNH,NHD->BTD") == "NHL,ALD->NHD"
    assert lora.delta_equation("BTD,NDH->BTNH") == "NDL,NLH->NDH"  # per head: no sum over heads


def test_scale_defaults_to_openpi_variants():
    def pair(rank, scaled=True):
        return lora.LoraPair("x/q_einsum/w", "x/q_einsum/lora_a", "x/q_einsum/lora_b", "", rank, scaled, 1)

    assert lora.scale_of(pair(16)) == lora.scale_of(pair(32)) == 1.0  # gemma_2b_lora, gemma_300m_lora
    assert lora.scale_of(pair(16), rslora=True) == pytest.approx(16 / 4)
    assert lora.scale_of(pair(8), alpha=2.0) == 0.25 and lora.scale_of(pair(8), alpha={8: 4.0}) == 0.5
    assert lora.scale_of(pair(8, scaled=False)) == 1.0  # feed-forward: no scale, any rank
    with pytest.raises(ValueError, match=r"x/q_einsum/lora_a: LoRA rank 8 matches no known openpi variant.*pass alpha"):
        lora.scale_of(pair(8))


def _write(tmp_path, flat, name="teacher", value_suffix=False):
    root = tmp_path / name
    tree = {f"{p}/value": x for p, x in flat.items()} if value_suffix else flat
    C.save_params(C.unflatten_params(tree), root / "params")
    return root


def test_lora_checkpoint_restores_merged(tmp_path):
    cfg = tiny(True, 1, depth=3)
    flat = add_lora(base_params(cfg))
    # As openpi's LoRA fine-tunes store it: frozen base weights in bfloat16, LoRA leaves in float32.
    flat = {p: x if lora.is_lora_leaf(p) or not p.startswith(LAYERS) else x.astype(jnp.bfloat16)
            for p, x in flat.items()}
    root = _write(tmp_path, flat, value_suffix=True)  # nnx.State checkpoints: a 'value' key per leaf
    want, n = lora.merge_lora(flat, alpha=ALPHAS)
    assert n == 10
    w = f"{LAYERS}attn/attn_vec_einsum_1/w"
    assert want[w].dtype == jnp.bfloat16 and not np.array_equal(want[w], flat[w])

    got = C.flatten_params(C.restore_params(root, lora_alpha=ALPHAS))
    assert sorted(got) == sorted(want)
    for p in want:
        assert got[p].dtype == want[p].dtype, p
        np.testing.assert_array_equal(got[p], want[p], err_msg=p)
    shapes = C.flatten_params(C.params_shapes(root))
    assert {p: s.shape for p, s in shapes.items()} == {p: x.shape for p, x in want.items()}

    # The per-layer reader make_student uses: merged too, streamed or not, for any layer subset.
    for stream in (0, 64 << 20):
        reader = ParamsReader(root, stream_min_bytes=stream, lora_alpha=ALPHAS)
        assert sorted(reader.paths) == sorted(want)
        np.testing.assert_array_equal(reader.read(w, layers=[2, 0]), want[w][[2, 0]])
        np.testing.assert_array_equal(reader.read(f"{LAYERS}mlp/linear"), want[f"{LAYERS}mlp/linear"])
    with pytest.raises(ValueError, match="is a LoRA leaf, merged into its weight"):
        reader.read(f"{LAYERS}mlp/linear_lora_a")

    # Sharded, with shardings built for the plain model (no LoRA leaves in them): merged on device.
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("fsdp",))
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, P(*([None] * (len(s.shape) - 1)),
                                                             "fsdp" if s.shape and s.shape[-1] % 2 == 0 else None)),
                             C.params_shapes(root))
    sharded = C.flatten_params(C.restore_params(root, dtype=jnp.float32, sharding=shardings, lora_alpha=ALPHAS))
    assert sharded[w].sharding == C.flatten_params(shardings)[w]
    ref32, _ = lora.merge_lora({p: x.astype(np.float32) for p, x in flat.items()}, alpha=ALPHAS)
    np.testing.assert_allclose(np.asarray(sharded[w]), ref32[w], rtol=1e-6, atol=1e-6)



def openpi_rank_lora(cfg, seed=3) -> dict:
    """Base params + LoRA at openpi's ranks (default alphas apply): rank 16 on the backbone's
    q_einsum, rank 32 on the expert's attn_vec_einsum, rank 3 on the feed-forwards (never scaled)."""
    flat = base_params(cfg)
    rng = np.random.default_rng(seed)
    for path, rank in ((f"{LAYERS}attn/q_einsum", 16), (f"{LAYERS}attn/attn_vec_einsum_1", 32)):
        w = flat[f"{path}/w"]
        flat[f"{path}/lora_a"] = (0.1 * rng.normal(size=w.shape[:-1] + (rank,))).astype(np.float32)
        flat[f"{path}/lora_b"] = (0.1 * rng.normal(size=w.shape[:-2] + (rank, w.shape[-1]))).astype(np.float32)
    flat.update({p: x for p, x in add_lora(base_params(cfg)).items() if "/mlp" in p and lora.is_lora_leaf(p)})
    return flat


def test_load_model_accepts_lora_checkpoint(tmp_path):
    """The strict loader of serve / export / evaluate sees the plain model's tree, merged."""
    cfg = tiny(True, 1)
    flat = openpi_rank_lora(cfg)
    _, params = load_model(_write(tmp_path, flat, name="openpi_ranks") / "params", config=cfg)
    want, n = lora.merge_lora(flat)
    assert n == 6
    got = C.flatten_params(params)
    assert sorted(got) == sorted(want)
    for p in want:
        np.testing.assert_array_equal(got[p], want[p], err_msg=p)
    # Ranks 3 and 2 on attention are no openpi variant: alpha is unknown, and the leaf is named.
    with pytest.raises(ValueError, match=r"layers/attn/\w+/lora_a: LoRA rank [23] matches no known openpi variant"):
        load_model(_write(tmp_path, add_lora(base_params(cfg)), name="odd_ranks") / "params", config=cfg)


def test_make_student_on_lora_tree_is_the_merged_student(tmp_path):
    cfg = tiny(True, 1, depth=3)
    flat = openpi_rank_lora(cfg)
    outs = {}
    for name, teacher in (("from_lora", flat), ("from_merged", lora.merge_lora(flat)[0])):
        outs[name] = tmp_path / name
        assert make_student_tool.main(["--teacher", str(_write(tmp_path, teacher, name=f"teacher_{name}")),
                                       "--layers", "0,2", "--out", str(outs[name]), "--quiet"]) == 0
    a = C.flatten_params(C.restore_params(outs["from_lora"]))
    b = C.flatten_params(C.restore_params(outs["from_merged"]))
    assert sorted(a) == sorted(b) and not any(lora.is_lora_leaf(p) for p in a)
    for p in a:
        np.testing.assert_array_equal(a[p], b[p], err_msg=p)
    assert json.loads((outs["from_lora"] / "layer_map.json").read_text())["teacher_lora_pairs_merged"] == 6
    assert json.loads((outs["from_merged"] / "layer_map.json").read_text())["teacher_lora_pairs_merged"] == 0
    # A rank no openpi variant has: refused (make_student has no alpha option), nothing written.
    odd = _write(tmp_path, add_lora(base_params(cfg)), name="odd")
    assert cli.run(make_student_tool.main, ["--teacher", str(odd), "--layers", "0,2", "--out",
                                            str(tmp_path / "refused"), "--quiet"]) == 1
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("change, match", [
    # rank on the second-to-last axis of lora_a instead of the last
    (lambda f: f.update({f"{LAYERS}attn/q_einsum/lora_a": np.zeros((2, 2, 3, 8), np.float32)}),
     r"PaliGemma/llm/layers/attn/q_einsum/lora_a: expected shape \(2, 2, 32, rank\).*got \(2, 2, 3, 8\)"),
    (lambda f: f.update({f"{LAYERS}mlp_1/linear_lora_b": np.zeros((2, 5, 16), np.float32)}),
     r"PaliGemma/llm/layers/mlp_1/linear_lora_b: expected shape \(2, 2, 16\).*got \(2, 5, 16\)"),
    (lambda f: f.pop(f"{LAYERS}attn/kv_einsum_1/lora_b"),
     r"PaliGemma/llm/layers/attn/kv_einsum_1/lora_a: LoRA leaf without its lora_b"),
    (lambda f: f.update({"PaliGemma/img/head/lora_a": np.zeros((32, 2), np.float32),
                         "PaliGemma/img/head/lora_b": np.zeros((2, 32), np.float32)}),
     r"PaliGemma/img/head/lora_a: a LoRA leaf on no weight openpi adapts"),
], ids=["rank-on-wrong-axis", "lora_b-rank-mismatch", "lone-lora_a", "no-adapted-weight"])
def test_malformed_lora_leaf_is_named(tmp_path, change, match):
    cfg = tiny(True, 1)
    flat = add_lora(base_params(cfg))
    change(flat)
    with pytest.raises(ValueError, match=match):
        lora.merge_lora(flat, alpha=ALPHAS)
    root = _write(tmp_path, flat)
    for load in (lambda: C.params_shapes(root), lambda: C.restore_params(root, lora_alpha=ALPHAS),
                 lambda: ParamsReader(root, lora_alpha=ALPHAS)):
        with pytest.raises(ValueError, match=match):
            load()
