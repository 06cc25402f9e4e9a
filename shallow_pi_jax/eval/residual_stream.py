"""How much each layer of a model changes its residual stream, per stack, across flow times t.

Per layer l (h_l = the hidden state entering layer l, h_L the last layer's output), averaged over
valid tokens: the backbone over the prefix tokens (independent of t: the prefix never attends to
the suffix), the action expert over the action tokens at each t, where x_t = t·ε + (1−t)·a:

- `backbone` / `expert`: cos(h_l, h_{l+1}), the similarity of consecutive hidden states;
- `*_update`: ‖h_{l+1} − h_l‖ / ‖h_l‖, the size of the layer's update relative to its input;
- `*_to_final`: cos(h_l, h_L), how close the stream already is to the last layer's (l = 0..L);
- `expert_readout`: ‖v(h_l) − v_t‖ / ‖v_t‖, the velocity read out of the expert's stream after l
  layers (the model's own final norm and action head applied to h_l) against the model's v_t.

A teacher that does most of its work in its first layers has large early updates, late layers near
cos 1, and a read-out error that is already small after a few layers. The command line is
`python -m shallow_pi_jax.layer_similarity` (`layer_similarity_report` is its work).
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from tqdm import tqdm

from shallow_pi_jax import cli, fileio
from shallow_pi_jax.data.pipeline import make_dataset
from shallow_pi_jax.eval.open_loop import eval_data_config
from shallow_pi_jax.models import masks
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.gemma import Block
from shallow_pi_jax.models.pi0 import Pi0
from shallow_pi_jax.serve.policy import load_checkpoint
from shallow_pi_jax.serve.presets import get_preset

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


def _rel_update(a, b):
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    return jnp.linalg.norm(b - a, axis=-1) / (jnp.linalg.norm(a, axis=-1) + 1e-12)


def _layer_stats(pres, sufs, pmask) -> dict:
    """Per-layer means: backbone over valid prefix tokens, expert over suffix tokens."""
    w = pmask[None].astype(jnp.float32)

    def prefix_mean(x):  # [L, B, P] → [L]
        return jnp.sum(x * w, axis=(1, 2)) / jnp.sum(w, axis=(1, 2))

    def suffix_mean(x):
        return jnp.mean(x, axis=(1, 2))

    return {
        "backbone": prefix_mean(_cosine(pres[:-1], pres[1:])),
        "expert": suffix_mean(_cosine(sufs[:-1], sufs[1:])),
        "backbone_update": prefix_mean(_rel_update(pres[:-1], pres[1:])),
        "expert_update": suffix_mean(_rel_update(sufs[:-1], sufs[1:])),
        "backbone_to_final": prefix_mean(_cosine(pres, pres[-1:])),
        "expert_to_final": suffix_mean(_cosine(sufs, sufs[-1:])),
    }


def _readout_error(model: Pi0, params, sufs, cond, v_t):
    """‖v(h_l) − v_t‖ / ‖v_t‖ per l, v(h_l) = the model's final norm and action head on h_l."""
    def one(h):
        v = model.apply({"params": params}, h, cond, method=_head)
        return jnp.mean(jnp.linalg.norm((v - v_t).reshape(len(v), -1), axis=-1)
                        / (jnp.linalg.norm(v_t.reshape(len(v_t), -1), axis=-1) + 1e-12))

    return jax.lax.map(one, sufs)


def layer_stats(cfg: ModelConfig, params, obs, x_t, time) -> dict:
    """_layer_stats of one batch at flow times `time`, plus the expert's read-out error."""
    pres, sufs, pmask, v_t = hidden_states(cfg, params, obs, x_t, time)
    model = Pi0(cfg)
    cond = model.apply({"params": params}, obs, x_t, time, method=_embed)[-1]
    out = _layer_stats(pres, sufs, pmask)
    out["expert_readout"] = _readout_error(model, params, sufs, cond, v_t)
    return out


BACKBONE_KEYS = ("backbone", "backbone_update", "backbone_to_final")  # one list: the prefix does not see t
EXPERT_KEYS = ("expert", "expert_update", "expert_to_final", "expert_readout")  # one list per flow time


def similarity(cfg: ModelConfig, params, batches, times, seed: int = 0) -> dict:
    """Average the per-layer statistics over `batches` (model inputs with `actions`) at each flow time."""
    fn = jax.jit(lambda p, o, x, t: layer_stats(cfg, p, o, x, t))
    rng = np.random.default_rng(seed)
    sums: dict[str, list[np.ndarray]] = {k: [] for k in BACKBONE_KEYS + EXPERT_KEYS}  # frame-weighted batch means
    n = 0
    for batch in batches:
        b = len(batch["state"])
        obs = {k: batch[k] for k in ("images", "image_masks", "state", "tokenized_prompt", "tokenized_prompt_mask")}
        noise = rng.standard_normal(batch["actions"].shape).astype(np.float32)
        per_t = [fn(params, obs, t * noise + (1 - t) * batch["actions"], jnp.full((b,), t, jnp.float32))
                 for t in times]
        for k in EXPERT_KEYS:
            sums[k].append(np.stack([np.asarray(st[k], np.float64) for st in per_t]) * b)
        for k in BACKBONE_KEYS:
            sums[k].append(np.asarray(per_t[0][k], np.float64) * b)
        n += b
    if n == 0:
        raise ValueError("no frames to analyse")
    return {"times": list(times), "frames": n, **{k: (sum(v) / n).tolist() for k, v in sums.items()}}


def format_table(res: dict) -> str:
    """One row per layer: backbone and expert (at each t) cos(h_l, h_l+1), update size and read-out error."""
    times = res["times"]
    cols = (["backbone cos", "backbone update"] + [f"expert cos t={t:g}" for t in times]
            + [f"expert update t={t:g}" for t in times] + [f"readout err t={t:g}" for t in times])
    head = "| layer | " + " | ".join(cols) + " |\n" + "|---" * (1 + len(cols)) + "|\n"
    rows = []
    for layer, b in enumerate(res["backbone"]):
        cells = [f"{b:.4f}", f"{res['backbone_update'][layer]:.3f}"]
        cells += [f"{res['expert'][i][layer]:.4f}" for i in range(len(times))]
        cells += [f"{res['expert_update'][i][layer]:.3f}" for i in range(len(times))]
        # read-out after layer l = from h_{l+1}
        cells += [f"{res['expert_readout'][i][layer + 1]:.3f}" for i in range(len(times))]
        rows.append(f"| {layer} | " + " | ".join(cells) + " |\n")
    return head + "".join(rows)


def plot(res: dict, path: pathlib.Path, title: str) -> None:
    """Three panels: update size per layer, cos(h_l, h_l+1), and the expert's velocity read-out error."""
    depth = len(res["backbone"])
    layers = np.arange(depth)
    cmap = plt.get_cmap("viridis")
    colours = [cmap(i / max(1, len(res["times"]) - 1)) for i in range(len(res["times"]))]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    # panels 0 and 1: one per-layer quantity, the backbone's line and one expert line per flow time
    panels = ((axes[0], "_update", "‖h_{l+1} − h_l‖ / ‖h_l‖", "how much layer l changes the stream"),
              (axes[1], "", "cos(h_l, h_{l+1})", "similarity of consecutive layers"))
    for ax, suffix, ylabel, title in panels:
        ax.plot(layers, res["backbone" + suffix], "k-o", label="backbone (prefix tokens)")
        for i, t in enumerate(res["times"]):
            ax.plot(layers, res["expert" + suffix][i], "--s", color=colours[i], label=f"action expert, t={t:g}")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
    ax = axes[2]
    for i, t in enumerate(res["times"]):
        ax.plot(np.arange(depth + 1), res["expert_readout"][i], "-s", color=colours[i], label=f"t={t:g}")
    ax.set_yscale("log")
    ax.set_xlabel("layers run (l)")
    ax.set_ylabel("‖v(h_l) − v_t‖ / ‖v_t‖")
    ax.set_title("velocity read out after l layers")
    for ax in axes[:2]:
        ax.set_xlabel("layer l")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def layer_similarity_report(checkpoint, data, out: pathlib.Path, times, *, max_frames: int = 64,
                            seed: int = 0) -> dict:
    """`similarity` of the model at `checkpoint` on the held-out data the flags `data` name
    (open_loop.eval_data_config); writes OUT/layer_similarity.{json,md,png}, all or nothing."""
    preset = get_preset(data.env)
    ckpt = load_checkpoint(cli.policy_path(checkpoint), preset=preset)
    data_cfg, _, dataset, _ = eval_data_config(data, ckpt, preset)

    def limited(it):
        seen = 0
        for batch in tqdm(it, desc="layer similarity", unit="batch"):
            if seen >= max_frames:
                return
            keep = min(len(batch["state"]), max_frames - seen)
            seen += keep
            yield jax.tree.map(lambda x: x[:keep], batch)

    res = similarity(ckpt.config, ckpt.params, limited(make_dataset(data_cfg, train=False)), times, seed)
    res.update(checkpoint=str(ckpt.root), dataset=dataset, depth=ckpt.config.depth)
    table = format_table(res)
    out.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_dir(out, overwrite=True) as tmp:
        fileio.write_json(tmp / "layer_similarity.json", res)
        fileio.write_text(tmp / "layer_similarity.md", table)
        plot(res, tmp / "layer_similarity.png", f"{ckpt.root.name}: L{ckpt.config.depth} on {dataset}")
    print(table)
    print(f"wrote {out}/layer_similarity.{{json,md,png}}")
    return res
