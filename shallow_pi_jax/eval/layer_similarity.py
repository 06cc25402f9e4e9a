"""Per-layer input/output cosine similarity of a model, across flow times t.

For layer l, the cosine similarity between each token's hidden state before and after the layer,
averaged over valid tokens: the backbone over the prefix tokens (independent of t: the prefix never
attends to the suffix) and the action expert over the action tokens at each t, where
x_t = t·ε + (1−t)·a. The command line is `python -m shallow_pi_jax.layer_similarity`.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from shallow_pi_jax.models import masks
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.gemma import Block
from shallow_pi_jax.models.pi0 import Pi0

matplotlib.use("Agg")


def _embed(module: Pi0, obs, x_t, time):
    prefix = module.embed_prefix(obs)
    suffix, suffix_mask, suffix_ar, cond = module.embed_suffix(obs, x_t, time)
    input_mask = jnp.concatenate([prefix.mask, suffix_mask], axis=1)
    attn_mask = masks.make_attn_mask(input_mask, jnp.concatenate([prefix.ar_mask, suffix_ar]))
    return prefix.tokens, suffix, prefix.mask, attn_mask, masks.positions_from_mask(input_mask), cond


def _head(module: Pi0, suffix_out, cond):
    normed = module.PaliGemma.llm.final_norms[1](suffix_out, cond)[0]
    return module.action_out_proj(normed[:, -module.config.action_horizon:].astype(jnp.float32))


def hidden_states(cfg: ModelConfig, params, obs, x_t, time):
    """Per-layer states: prefix [L+1, B, P, D], suffix [L+1, B, S, E], prefix mask [B, P], v_t [B, H, A].

    Runs openpi's layers one by one (the scanned stack's slice l) so every layer boundary is visible.
    """
    model = Pi0(cfg)
    pre, suf, pmask, attn_mask, positions, cond = model.apply({"params": params}, obs, x_t, time, method=_embed)
    layers = params["PaliGemma"]["llm"]["layers"]
    block = Block((cfg.llm, cfg.expert), jnp.dtype(cfg.dtype))
    xs = (pre.astype(cfg.dtype), suf.astype(cfg.dtype))
    pres, sufs = [xs[0]], [xs[1]]
    for layer in range(cfg.depth):
        layer_params = jax.tree.map(lambda x, i=layer: x[i], layers)
        (xs, _), _ = block.apply({"params": layer_params}, (xs, None), jnp.int32(layer), None, positions, attn_mask,
                                 (None, cond), (), 0)
        pres.append(xs[0]), sufs.append(xs[1])
    v_t = model.apply({"params": params}, xs[1], cond, method=_head)
    return jnp.stack(pres), jnp.stack(sufs), pmask, v_t


def _cosine(a, b):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-12)


@jax.jit
def _layer_cosines(pres, sufs, pmask):
    """Mean in/out cosine per layer: backbone over valid prefix tokens, expert over suffix tokens."""
    cp = _cosine(pres[:-1], pres[1:])  # [L, B, P]
    w = pmask[None].astype(jnp.float32)
    backbone = jnp.sum(cp * w, axis=(1, 2)) / jnp.sum(w, axis=(1, 2))
    expert = jnp.mean(_cosine(sufs[:-1], sufs[1:]), axis=(1, 2))
    return backbone, expert


def similarity(cfg: ModelConfig, params, batches, times, seed: int = 0) -> dict:
    """Average per-layer cosines over `batches` (model inputs with `actions`) at each flow time."""
    fn = jax.jit(lambda p, o, x, t: hidden_states(cfg, p, o, x, t)[:3])
    rng = np.random.default_rng(seed)
    sums_b, sums_e, n = np.zeros(cfg.depth), np.zeros((len(times), cfg.depth)), 0
    for batch in batches:
        b = len(batch["state"])
        obs = {k: batch[k] for k in ("images", "image_masks", "state", "tokenized_prompt", "tokenized_prompt_mask")}
        noise = rng.standard_normal(batch["actions"].shape).astype(np.float32)
        for i, t in enumerate(times):
            x_t = t * noise + (1 - t) * batch["actions"]
            bb, ee = _layer_cosines(*fn(params, obs, x_t, jnp.full((b,), t, jnp.float32)))
            sums_e[i] += np.asarray(ee) * b
            if i == 0:
                sums_b += np.asarray(bb) * b
        n += b
    if n == 0:
        raise ValueError("no frames to analyse")
    return {"times": list(times), "backbone": (sums_b / n).tolist(), "expert": (sums_e / n).tolist(), "frames": n}


def format_table(res: dict) -> str:
    times = res["times"]
    head = "| layer | backbone (prefix) | " + " | ".join(f"expert t={t:g}" for t in times) + " |\n"
    head += "|---" * (2 + len(times)) + "|\n"
    rows = []
    for layer, b in enumerate(res["backbone"]):
        cells = " | ".join(f"{res['expert'][i][layer]:.4f}" for i in range(len(times)))
        rows.append(f"| {layer} | {b:.4f} | {cells} |\n")
    return head + "".join(rows)


def plot(res: dict, path: pathlib.Path, title: str) -> None:
    layers = np.arange(len(res["backbone"]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(layers, res["backbone"], "k-o", label="backbone (prefix tokens)")
    cmap = plt.get_cmap("viridis")
    for i, t in enumerate(res["times"]):
        ax.plot(layers, res["expert"][i], "--s", color=cmap(i / max(1, len(res["times"]) - 1)),
                label=f"action expert, t={t:g}")
    ax.set_xlabel("layer")
    ax.set_ylabel("cos(layer input, layer output)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
