"""ONNX graphs of the PyTorch policy, and the observation <-> graph-input mapping shared by runners.

Two layouts (see docs/export.md for the measurements behind the default):

- "single": one graph `policy.onnx`, observation + noise -> actions, with the prefix pass and all
  `num_steps` Euler steps unrolled (the step count is fixed at export time);
- "split": `prefix.onnx` (images + prompt -> stacked KV cache + prefix mask) and `step.onnx`
  (KV cache + x_t + t -> v_t); the Euler loop runs outside, so the step count stays free.

Inputs (batch axis dynamic everywhere): `image_<camera>` float32 [B,H,W,3] in [-1,1],
`image_mask_<camera>` bool [B], `state` float32 [B,action_dim] (π0 only; π0.5 does not read it),
`tokenized_prompt` int32 [B,T], `tokenized_prompt_mask` bool [B,T], `noise` float32 [B,H,D].

Prefix (models/prefix.py): "compact" (default) graphs take only the exported `cameras` (default all
of the model's) and a dynamic prompt axis T ("prompt_tokens"); the runner cuts each batch's prompt
to the smallest of `prompt_buckets` that holds its longest prompt, as the JAX Policy does, so T
only ever takes the bucket lengths (a TensorRT engine gets one shape profile over them). "full" is
openpi's prefix: every camera and T = max_token_len, fixed. Both give the same actions.

    from shallow_pi_jax.export.onnx_graph import export_onnx
    files = export_onnx(model, "out/policy.onnx", mode="single", num_steps=10)
    files = export_onnx(model, "out/libero.onnx", cameras=("base_0_rgb", "left_wrist_0_rgb"))
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from shallow_pi_jax.export.torch_model import Pi0Torch, euler_schedule
from shallow_pi_jax.models.prefix import PROMPT_BUCKETS, prompt_buckets

OPSET = 17
TWO_GB = 2 * 1024**3
MODES = ("single", "split")
PREFIXES = ("compact", "full")
METADATA_KEY = "shallow_pi_jax"


def observation_input_names(model: Pi0Torch, cameras=None) -> list[str]:
    c = model.config
    cams = c.image_keys if cameras is None else cameras
    names = [f"image_{k}" for k in cams] + [f"image_mask_{k}" for k in cams]
    if not c.pi05:
        names.append("state")
    return names + ["tokenized_prompt", "tokenized_prompt_mask"]


def observation_feed(obs: Mapping, image_keys, pi05: bool) -> dict[str, np.ndarray]:
    """The project's observation dict -> {graph input name: numpy array} with the graph's dtypes."""
    images = obs["images"]
    missing = [k for k in image_keys if k not in images]
    if missing:
        raise ValueError(f"observation images: missing cameras {missing}; expected {list(image_keys)}")
    b = np.shape(images[image_keys[0]])[0]
    feed = {f"image_{k}": np.asarray(images[k], np.float32) for k in image_keys}
    masks = obs.get("image_masks", {})
    feed.update({f"image_mask_{k}": np.asarray(masks.get(k, np.ones(b, bool)), bool) for k in image_keys})
    if not pi05:
        feed["state"] = np.asarray(obs["state"], np.float32)
    feed["tokenized_prompt"] = np.asarray(obs["tokenized_prompt"], np.int32)
    feed["tokenized_prompt_mask"] = np.asarray(obs["tokenized_prompt_mask"], bool)
    return feed


class _Inputs(nn.Module):
    """Unpacks the flat graph inputs into the model's pieces (`n_cam` cameras' images, then masks)."""

    def __init__(self, model: Pi0Torch, n_cam: int | None = None):
        super().__init__()
        self.model = model
        self.n_cam = len(model.config.image_keys) if n_cam is None else n_cam
        self.pi05 = model.config.pi05

    def split(self, args):
        n = self.n_cam
        images, masks, rest = list(args[:n]), list(args[n:2 * n]), list(args[2 * n:])
        state = None if self.pi05 else rest.pop(0)
        return images, masks, state, rest


class PolicyGraph(_Inputs):
    """Observation + noise -> actions; prefix pass and `num_steps` Euler steps in one graph."""

    def __init__(self, model: Pi0Torch, num_steps: int, n_cam: int | None = None):
        super().__init__(model, n_cam)
        self.schedule = euler_schedule(num_steps)

    def forward(self, *args):
        images, masks, state, (tokens, token_mask, noise) = self.split(args)
        k, v, pmask = self.model.prefix_cache(images, masks, tokens, token_mask)
        x = noise
        for t, dt in self.schedule:
            time = torch.full_like(x[:, 0, 0], t)
            x = x + torch.tensor(dt, dtype=torch.float32) * self.model.denoise_step(state, k, v, pmask, x, time)
        return x


class PrefixGraph(_Inputs):
    """Observation -> (k_cache, v_cache [L,B,P,K,H], prefix_mask [B,P])."""

    def forward(self, *args):
        images, masks, _, (tokens, token_mask) = self.split(args)
        return self.model.prefix_cache(images, masks, tokens, token_mask)


class StepGraph(nn.Module):
    """([state,] k_cache, v_cache, prefix_mask, x_t, time [B]) -> v_t [B,H,D]."""

    def __init__(self, model: Pi0Torch):
        super().__init__()
        self.model = model

    def forward(self, *args):
        if self.model.config.pi05:
            state, (k, v, pmask, x_t, time) = None, args
        else:
            state, k, v, pmask, x_t, time = args
        return self.model.denoise_step(state, k, v, pmask, x_t, time)


def example_observation(model: Pi0Torch, batch: int = 1, seed: int = 0) -> dict:
    """A random, valid observation of the model's sizes (for tracing and benchmarks)."""
    c = model.config
    g = np.random.default_rng(seed)
    h, w = c.image_size
    n_tok = c.max_token_len
    mask = np.zeros((batch, n_tok), bool)
    mask[:, : max(1, n_tok // 3)] = True
    return {
        "images": {k: g.uniform(-1, 1, (batch, h, w, 3)).astype(np.float32) for k in c.image_keys},
        "image_masks": {k: np.ones(batch, bool) for k in c.image_keys},
        "state": g.normal(size=(batch, c.action_dim)).astype(np.float32),
        "tokenized_prompt": g.integers(0, c.vocab_size, (batch, n_tok)).astype(np.int32),
        "tokenized_prompt_mask": mask,
    }


def _export(module, args, names, outputs, dynamic, path, opset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module, tuple(args), str(path), dynamo=False, opset_version=opset,
                          input_names=names, output_names=outputs, dynamic_axes=dynamic,
                          do_constant_folding=True)


def _finalize(path: pathlib.Path, external_data: str, meta: dict) -> list[pathlib.Path]:
    """Attach metadata; re-save with one external-data file when over 2 GB (or when asked)."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    size = sum(t.ByteSize() for t in model.graph.initializer)
    use_external = external_data == "always" or (external_data == "auto" and size > TWO_GB - 64 * 1024**2)
    final = path.parent / "final"
    final.mkdir(exist_ok=True)
    if use_external:
        onnx.save_model(model, str(final / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
        return [final / path.name, final / (path.name + ".data")]
    onnx.save_model(model, str(final / path.name))
    return [final / path.name]


def read_metadata(onnx_path) -> dict:
    """The json this module stores in a graph's metadata (mode, role, num_steps, model config)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            return json.loads(p.value)
    raise ValueError(f"{onnx_path}: no {METADATA_KEY!r} metadata; was it written by shallow_pi_jax.export_onnx?")


@torch.no_grad()
def export_onnx(model: Pi0Torch, out: str | pathlib.Path, mode: str = "single", num_steps: int = 10,
                opset: int = OPSET, external_data: str = "auto", example_batch: int = 2,
                prefix: str = "compact", cameras=None, buckets=PROMPT_BUCKETS) -> list[pathlib.Path]:
    """Export float32 graphs next to `out` (a .onnx path). Returns the files written.

    mode "single" writes `out`; "split" writes `<stem>_prefix.onnx` and `<stem>_step.onnx`.
    external_data: "auto" (only over 2 GB), "always" or "never".
    prefix "compact": the graph reads only `cameras` (default: all the model's, in config order) and
    has a dynamic prompt axis, fed at the `buckets` lengths by the runners; "full": openpi's prefix.
    """
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if prefix not in PREFIXES:
        raise ValueError(f"prefix: expected one of {PREFIXES}, got {prefix!r}")
    keys = model.config.image_keys
    cams = tuple(keys if cameras is None else cameras)
    if prefix == "full" and cams != tuple(keys):
        raise ValueError(f"cameras: a full-prefix graph reads every camera {list(keys)}; got {list(cams)} "
                         "(compact graphs take a subset)")
    if not cams or [k for k in keys if k in cams] != list(cams) or len(set(cams)) != len(cams):
        raise ValueError(f"cameras: expected a non-empty subset of {list(keys)} in that order, got {list(cams)}")
    if opset < 17:
        raise ValueError(f"opset: expected >= 17, got {opset}")
    if external_data not in ("auto", "always", "never"):
        raise ValueError(f"external_data: expected auto|always|never, got {external_data!r}")
    if model.dtype != torch.float32:
        raise ValueError(f"model dtype: export a float32 model (got {model.dtype}); TensorRT picks fp16 at build time")
    out = pathlib.Path(out)
    if out.suffix != ".onnx":
        raise ValueError(f"out: expected a path ending in .onnx, got {str(out)!r}")
    model = model.eval()
    c = model.config
    obs = example_observation(model, example_batch)
    feed = observation_feed(obs, cams, c.pi05)
    names = observation_input_names(model, cams)
    args = [torch.from_numpy(feed[n]) for n in names]
    batch_axes = {n: {0: "batch"} for n in names}
    # The prompt axis (and the prefix axis of the KV cache it feeds) is dynamic in a compact graph.
    # Traced at max_token_len, which is one of the buckets; the tests run the other lengths.
    prompt_axis, cache_axis = ({}, {}) if prefix == "full" else ({1: "prompt_tokens"}, {2: "prefix_tokens"})
    for n in ("tokenized_prompt", "tokenized_prompt_mask"):
        batch_axes[n] = {**batch_axes[n], **prompt_axis}
    noise = torch.randn(example_batch, c.action_horizon, c.action_dim)
    meta = {"mode": mode, "num_steps": num_steps, "opset": opset, "model": c.to_dict(), "prefix": prefix,
            "cameras": list(cams),
            "prompt_buckets": list(prompt_buckets(c.max_token_len, buckets) if prefix == "compact"
                                   else (c.max_token_len,))}
    out.parent.mkdir(parents=True, exist_ok=True)
    # Exported in a scratch directory (the TorchScript exporter may spill one file per tensor for
    # big models) and moved into place at the end, so a failed export leaves nothing behind.
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        files = []
        if mode == "single":
            path = tmp / out.name
            _export(PolicyGraph(model, num_steps, len(cams)), args + [noise], names + ["noise"], ["actions"],
                    {**batch_axes, "noise": {0: "batch"}, "actions": {0: "batch"}}, path, opset)
            files += _finalize(path, external_data, {**meta, "role": "policy"})
        else:
            k, v, pmask = PrefixGraph(model, len(cams))(*args)
            cache_axes = {"k_cache": {1: "batch", **cache_axis}, "v_cache": {1: "batch", **cache_axis},
                          "prefix_mask": {0: "batch", **{1: a for a in cache_axis.values()}}}
            path = tmp / (out.stem + "_prefix.onnx")
            _export(PrefixGraph(model, len(cams)), args, names, ["k_cache", "v_cache", "prefix_mask"],
                    {**batch_axes, **cache_axes}, path, opset)
            files += _finalize(path, external_data, {**meta, "role": "prefix"})
            step_names = ([] if c.pi05 else ["state"]) + ["k_cache", "v_cache", "prefix_mask", "x_t", "time"]
            step_args = (([] if c.pi05 else [args[names.index("state")]])
                         + [k, v, pmask, noise, torch.ones(example_batch)])
            axes = {n: cache_axes.get(n, {0: "batch"}) for n in step_names + ["v_t"]}
            path = tmp / (out.stem + "_step.onnx")
            _export(StepGraph(model), step_args, step_names, ["v_t"], axes, path, opset)
            files += _finalize(path, external_data, {**meta, "role": "step"})
        written = []
        for f in files:
            dest = out.parent / f.name
            os.replace(f, dest)
            written.append(dest)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
