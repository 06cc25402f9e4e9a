"""TensorRT runner for the exported policy graphs, with the same API as OnnxPolicy / openpi policies.

    # shape profiles for trtexec (used by build_engines.sh; needs only the `onnx` package)
    python3 tools/jetson/trt_policy.py shapes model.onnx --min 1 --opt 1 --max 2
    # latency on the device, optionally checked against onnxruntime on the same inputs
    python3 tools/jetson/trt_policy.py bench --engine engines/sm87_trt10.3/model.engine --repeats 50 --check model.onnx

    from trt_policy import TrtPolicy
    policy = TrtPolicy("engines/sm87_trt10.3/model.engine")   # or .../model_prefix.engine (split)
    out = policy.infer(obs)                                   # {"actions": [B,H,D] float32, "policy_timing": ...}

The engine's sidecar `<engine>.json` (written by build_engines.sh from the ONNX metadata) gives the
layout (single / split), step count, cameras and action shape. Buffers are torch CUDA tensors, so
the NVIDIA PyTorch wheel for JetPack and TensorRT's Python bindings are the only dependencies.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

# Same key and reader as shallow_pi_jax.export.onnx_graph, repeated on purpose: this runner must
# work on a Jetson that has TensorRT and numpy but not the package (nor jax).
META_KEY = "shallow_pi_jax"


def onnx_metadata(onnx_path) -> dict:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    for p in m.metadata_props:
        if p.key == META_KEY:
            return json.loads(p.value)
    raise ValueError(f"{onnx_path}: no {META_KEY!r} metadata; export it with tools/export_onnx.py")


def _prefix_len(meta: dict, prompt_len: int) -> int:
    return len(meta.get("cameras", meta["model"]["image_keys"])) * _tokens_per_image(meta) + prompt_len


def _tokens_per_image(meta: dict) -> int:
    m = meta["model"]
    return (m["image_size"][0] // m["siglip"]["patch_size"][0]) * (m["image_size"][1] // m["siglip"]["patch_size"][1])


def shape_profiles(onnx_path, lo: int, opt: int, hi: int) -> tuple[str, str, str]:
    """trtexec --minShapes/--optShapes/--maxShapes values: batch varies; a compact graph's prompt
    axis ("prompt_tokens", and the KV cache's "prefix_tokens") spans its smallest to largest bucket,
    optimised for the smallest (LIBERO instructions); every other axis is fixed."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    meta = onnx_metadata(onnx_path)
    buckets = meta.get("prompt_buckets", [meta["model"]["max_token_len"]])
    prompt = {"min": buckets[0], "opt": buckets[0], "max": buckets[-1]}
    out = []
    for b, which in ((lo, "min"), (opt, "opt"), (hi, "max")):
        sizes = {"batch": b, "prompt_tokens": prompt[which], "prefix_tokens": _prefix_len(meta, prompt[which])}
        specs = []
        for i in m.graph.input:
            dims = [d.dim_value if d.dim_value else sizes[d.dim_param] for d in i.type.tensor_type.shape.dim]
            specs.append(f"{i.name}:" + "x".join(str(d) for d in dims))
        out.append(",".join(specs))
    return tuple(out)


class _Engine:
    def __init__(self, path):
        import tensorrt as trt
        import torch

        self.torch = torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as f:
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise ValueError(f"{path}: TensorRT could not load it (built for another GPU / TensorRT version?)")
        self.ctx = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        to_torch = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
                    trt.int64: torch.int64, trt.bool: torch.bool}
        self.dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}

    def __call__(self, feed: dict) -> dict:
        torch = self.torch
        keep = []
        for n in self.inputs:
            x = feed[n]
            x = (x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x)))
            x = x.to("cuda", self.dtypes[n]).contiguous()
            keep.append(x)
            self.ctx.set_input_shape(n, tuple(x.shape))
            self.ctx.set_tensor_address(n, x.data_ptr())
        outs = {}
        for n in self.outputs:
            outs[n] = torch.empty(tuple(self.ctx.get_tensor_shape(n)), dtype=self.dtypes[n], device="cuda")
            self.ctx.set_tensor_address(n, outs[n].data_ptr())
        stream = torch.cuda.current_stream()
        if not self.ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return outs


def _euler_schedule(num_steps: int):
    dt = np.float32(-1.0 / num_steps)
    t, out = np.float32(1.0), []
    while t >= -dt / 2:  # float32 accumulation, as openpi's JAX loop
        out.append((t, dt))
        t = np.float32(t + dt)
    return out


class TrtPolicy:
    """`infer(obs, noise=None) -> {"actions", "policy_timing"}`; obs is the project's batch dict."""

    def __init__(self, engine_path, seed: int = 0):
        path = pathlib.Path(engine_path)
        side = path.with_suffix(path.suffix + ".json")
        if not side.is_file():
            raise ValueError(f"{side} missing: build engines with tools/jetson/build_engines.sh")
        self.meta = json.loads(side.read_text())
        m = self.meta["model"]
        self.mode, self.num_steps = self.meta["mode"], int(self.meta["num_steps"])
        self.image_keys, self.pi05 = tuple(m["image_keys"]), bool(m["pi05"])
        # Compact graphs: their cameras, and the prompt cut to a bucket (models/prefix.py's rule).
        self.cameras = tuple(self.meta.get("cameras", self.image_keys))
        self.buckets = tuple(self.meta.get("prompt_buckets", (m["max_token_len"],)))
        self.action_shape = (int(m["action_horizon"]), int(m["action_dim"]))
        self._rng = np.random.default_rng(seed)
        if self.mode == "single":
            self.policy = _Engine(path)
        else:
            stem = path.name.removesuffix(".engine").removesuffix("_prefix").removesuffix("_step")
            self.prefix = _Engine(path.with_name(stem + "_prefix.engine"))
            self.step = _Engine(path.with_name(stem + "_step.engine"))

    def _feed(self, obs):
        images, masks = obs["images"], obs.get("image_masks", {})
        b = np.shape(images[self.image_keys[0]])[0]
        valid = [k for k in self.image_keys if np.any(masks.get(k, np.ones(b, bool)))]
        missing = [k for k in valid if k not in self.cameras]
        if missing:
            raise ValueError(f"observation image_masks: cameras {missing} are valid in this batch but the engine "
                             f"was built for cameras {list(self.cameras)} only")
        feed = {f"image_{k}": np.asarray(images[k], np.float32) for k in self.cameras}
        feed.update({f"image_mask_{k}": np.asarray(masks.get(k, np.ones(b, bool)), bool) for k in self.cameras})
        if not self.pi05:
            feed["state"] = np.asarray(obs["state"], np.float32)
        feed["tokenized_prompt"] = np.asarray(obs["tokenized_prompt"], np.int32)
        feed["tokenized_prompt_mask"] = np.asarray(obs["tokenized_prompt_mask"], bool)
        # Slots past the batch's last valid prompt token are padding for every example: cut them,
        # keeping the smallest bucket that holds the rest (the shapes the engine was built for).
        used = np.flatnonzero(feed["tokenized_prompt_mask"].any(axis=0))
        n = int(used[-1]) + 1 if used.size else 0
        bucket = next(x for x in self.buckets if x >= n)
        for k in ("tokenized_prompt", "tokenized_prompt_mask"):
            feed[k] = np.ascontiguousarray(feed[k][:, :bucket])
        return feed, b

    def infer(self, obs, noise=None, num_steps=None) -> dict:
        t0 = time.perf_counter()
        feed, b = self._feed(obs)
        if noise is None:
            noise = self._rng.standard_normal((b, *self.action_shape)).astype(np.float32)
        if self.mode == "single":
            if num_steps not in (None, self.num_steps):
                raise ValueError(f"num_steps: engine built with {self.num_steps} steps, got {num_steps}")
            actions = self.policy({**feed, "noise": noise})["actions"]
        else:
            torch = self.prefix.torch
            pre = self.prefix(feed)
            x = torch.from_numpy(np.asarray(noise, np.float32)).cuda()
            for t, dt in _euler_schedule(num_steps or self.num_steps):
                step = {"k_cache": pre["k_cache"], "v_cache": pre["v_cache"], "prefix_mask": pre["prefix_mask"],
                        "x_t": x, "time": torch.full((b,), float(t), device="cuda")}
                if not self.pi05:
                    step["state"] = feed["state"]
                x = x + float(dt) * self.step(step)["v_t"].float()
            actions = x
        actions = actions.float().cpu().numpy()
        return {"actions": actions, "policy_timing": {"infer_ms": 1000 * (time.perf_counter() - t0)}}


def _random_obs(meta, batch, seed=0):
    m = meta["model"]
    g = np.random.default_rng(seed)
    h, w = m["image_size"]
    mask = np.zeros((batch, m["max_token_len"]), bool)
    mask[:, : max(1, m["max_token_len"] // 3)] = True
    return {"images": {k: g.uniform(-1, 1, (batch, h, w, 3)).astype(np.float32) for k in m["image_keys"]},
            "image_masks": {k: np.ones(batch, bool) for k in m["image_keys"]},
            "state": g.standard_normal((batch, m["action_dim"])).astype(np.float32),
            "tokenized_prompt": g.integers(0, m["vocab_size"], (batch, m["max_token_len"])).astype(np.int32),
            "tokenized_prompt_mask": mask}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shapes", help="print min/opt/max shape specs for trtexec, one per line")
    s.add_argument("onnx")
    s.add_argument("--min", type=int, default=1)
    s.add_argument("--opt", type=int, default=1)
    s.add_argument("--max", type=int, default=1)
    m = sub.add_parser("meta", help="write the ONNX metadata as json (the engine sidecar)")
    m.add_argument("onnx")
    m.add_argument("out")
    b = sub.add_parser("bench", help="latency of an engine on random inputs")
    b.add_argument("--engine", required=True)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--repeats", type=int, default=50)
    b.add_argument("--check", help="ONNX file: compare actions with onnxruntime on the same inputs")
    a = p.parse_args(argv)
    if a.cmd == "shapes":
        print("\n".join(shape_profiles(a.onnx, a.min, a.opt, a.max)))
    elif a.cmd == "meta":
        pathlib.Path(a.out).write_text(json.dumps(onnx_metadata(a.onnx), indent=1))
    else:
        pol = TrtPolicy(a.engine)
        obs = _random_obs(pol.meta, a.batch)
        noise = np.random.default_rng(1).standard_normal((a.batch, *pol.action_shape)).astype(np.float32)
        for _ in range(3):
            out = pol.infer(obs, noise=noise)
        ms = sorted(pol.infer(obs, noise=noise)["policy_timing"]["infer_ms"] for _ in range(a.repeats))
        print(f"{a.engine}: batch {a.batch}, median {ms[len(ms) // 2]:.2f} ms, p90 {ms[int(len(ms) * 0.9)]:.2f} ms")
        if a.check:
            # Optional on the robot: the check needs this package installed (pip install --no-deps -e .).
            from shallow_pi_jax.export.onnx_policy import OnnxPolicy
            ref = OnnxPolicy(a.check).infer(obs, noise=noise)["actions"]
            err = np.abs(out["actions"] - ref).max()
            print(f"max |TensorRT - onnxruntime| = {err:.3g} (fp16 engines: expect ~1e-2 relative)")


if __name__ == "__main__":
    main()
