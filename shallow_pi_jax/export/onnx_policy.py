"""Run exported ONNX graphs with onnxruntime behind a policy API: `infer(obs) -> {"actions": ...}`.

Works with both layouts of `onnx_graph.export_onnx` ("single": one graph; "split": prefix graph + step graph
with the Euler loop here), and both prefixes: a compact graph is fed its cameras and each batch's
prompt cut to the smallest exported bucket that holds the batch's longest prompt (the JAX Policy's
rule, models/prefix.py). The TensorRT runner in tools/jetson/ answers the same API.

    policy = OnnxPolicy("out/policy.onnx")                  # or "out/policy_prefix.onnx"
    out = policy.infer(obs)                                # obs: the project's batch dict
    out["actions"]                                         # float32 [B, horizon, action_dim]
"""
from __future__ import annotations

import pathlib
import time

import numpy as np

from shallow_pi_jax.export.onnx_graph import observation_feed, read_metadata
from shallow_pi_jax.export.torch_model import euler_schedule
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.models.prefix import prefix_plan


def _session(path, providers, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])


class OnnxPolicy:
    def __init__(self, onnx_path, providers=None, threads: int | None = None, seed: int = 0):
        path = pathlib.Path(onnx_path)
        meta = read_metadata(path)
        self.meta = meta
        self.mode = meta["mode"]
        m = meta["model"]
        self.image_keys = tuple(m["image_keys"])
        self.pi05 = bool(m["pi05"])
        self.action_shape = (int(m["action_horizon"]), int(m["action_dim"]))
        self.num_steps = int(meta["num_steps"])
        self.config = ModelConfig.from_dict(m)
        # Graphs exported before compaction have openpi's prefix: every camera, the whole prompt.
        self.prefix_kind = meta.get("prefix", "full")
        self.cameras = tuple(meta.get("cameras", self.image_keys))
        self.prompt_buckets = tuple(int(b) for b in meta.get("prompt_buckets", (m["max_token_len"],)))
        self._rng = np.random.default_rng(seed)
        if self.mode == "single":
            self.policy = _session(path, providers, threads)
        else:
            stem = path.name.removesuffix(".onnx").removesuffix("_prefix").removesuffix("_step")
            self.prefix = _session(path.with_name(stem + "_prefix.onnx"), providers, threads)
            self.step = _session(path.with_name(stem + "_step.onnx"), providers, threads)

    def feed(self, obs) -> dict[str, np.ndarray]:
        """The graph's inputs for a batch: its cameras, the prompt cut to the batch's bucket."""
        b = np.shape(obs["tokenized_prompt_mask"])[0]
        masks = {k: obs.get("image_masks", {}).get(k, np.ones(b, bool)) for k in self.image_keys}
        plan = prefix_plan(self.config, masks, obs["tokenized_prompt_mask"], self.prompt_buckets)
        missing = [k for k in plan.cameras if k not in self.cameras]
        if missing:
            raise ValueError(f"observation image_masks: cameras {missing} are valid in this batch but the graph "
                             f"was exported with cameras {list(self.cameras)} only; export them too")
        # The graph's cameras masked for this whole batch are still fed: masked tokens change nothing.
        feed = observation_feed(obs, self.cameras, self.pi05)
        for n in ("tokenized_prompt", "tokenized_prompt_mask"):
            feed[n] = np.ascontiguousarray(feed[n][:, :plan.prompt_len])
        return feed

    def infer(self, obs, noise=None, num_steps: int | None = None) -> dict:
        """-> {"actions": float32 [B,H,D], "policy_timing": {"infer_ms": ...}}."""
        t0 = time.perf_counter()
        feed = self.feed(obs)
        b = feed["tokenized_prompt"].shape[0]
        if noise is None:
            noise = self._rng.standard_normal((b, *self.action_shape)).astype(np.float32)
        noise = np.asarray(noise, np.float32)
        if noise.shape != (b, *self.action_shape):
            raise ValueError(f"noise: expected shape {(b, *self.action_shape)}, got {noise.shape}")
        if self.mode == "single":
            if num_steps not in (None, self.num_steps):
                raise ValueError(f"num_steps: this graph was exported with {self.num_steps} steps, got {num_steps}")
            actions = self.policy.run(["actions"], {**feed, "noise": noise})[0]
        else:
            k, v, pmask = self.prefix.run(None, {i.name: feed[i.name] for i in self.prefix.get_inputs()})
            x = noise
            for t, dt in euler_schedule(num_steps or self.num_steps):
                step_feed = {"k_cache": k, "v_cache": v, "prefix_mask": pmask, "x_t": x,
                             "time": np.full((b,), t, np.float32)}
                if not self.pi05:
                    step_feed["state"] = feed["state"]
                x = x + np.float32(dt) * self.step.run(["v_t"], step_feed)[0]
            actions = x
        return {"actions": actions, "policy_timing": {"infer_ms": 1000 * (time.perf_counter() - t0)}}
