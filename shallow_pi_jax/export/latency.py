"""CPU latency of teacher vs student, PyTorch eager and onnxruntime side by side: `bench_export`'s work.

    bench_export(args)     # args: the command's flags (python -m shallow_pi_jax.bench_export --help)
"""
from __future__ import annotations

import pathlib
import statistics
import tempfile
import time

import numpy as np
import torch

from shallow_pi_jax.export import onnx_graph
from shallow_pi_jax.export.onnx_policy import OnnxPolicy
from shallow_pi_jax.export.torch_model import Pi0Torch
from shallow_pi_jax.models.config import GemmaConfig, ModelConfig, SiglipConfig
from shallow_pi_jax.training.layer_map import make_layer_map, parse_layers


def make_config(args):
    if args.size == "fixture":
        w, e, m, vit = 64, 32, 128, SiglipConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(16, 16))
        heads, hd, vocab = 4, 16, 1024
    else:
        w, e, m, vit = 256, 128, 1024, SiglipConfig(width=128, depth=4, mlp_dim=512, num_heads=4, patch_size=(14, 14))
        heads, hd, vocab = 4, 64, 4096
    w, e, m = args.width or w, args.expert_width or e, args.mlp_dim or m
    g = lambda width, mlp: GemmaConfig(width=width, depth=args.teacher_depth, mlp_dim=mlp, num_heads=heads,  # noqa: E731
                                       num_kv_heads=1, head_dim=hd)
    return ModelConfig(pi05=args.pi05, llm=g(w, m), expert=g(e, max(m // 4, 8)), siglip=vit, vocab_size=vocab,
                       action_horizon=10, max_token_len=args.prompt)


def _median_ms(fn, repeats):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - t0))
    return statistics.median(out)


def bench_export(args) -> dict:
    """The latency table the flags ask for, printed; returns every timed run, per (runtime, model)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = make_config(args)
    lmap = make_layer_map(args.teacher_depth, layers=parse_layers(args.layers))
    torch.manual_seed(0)
    teacher = Pi0Torch(cfg).eval().requires_grad_(False)
    student = Pi0Torch(cfg.with_depth(lmap.student_depth)).eval().requires_grad_(False)
    # The student is the teacher with layers removed (as make_student builds it).
    src, dst = teacher.state_dict(), student.state_dict()
    for k, v in dst.items():
        if ".layers." in k and "vision_model" not in k:
            head, rest = k.split(".layers.", 1)
            j, tail = rest.split(".", 1)
            k = f"{head}.layers.{lmap.indices[int(j)]}.{tail}"
        v.copy_(src[k])
    obs = onnx_graph.example_observation(teacher, args.batch)
    noise = np.random.default_rng(0).standard_normal(
        (args.batch, cfg.action_horizon, cfg.action_dim)).astype(np.float32)
    n_params = lambda m: sum(p.numel() for n, p in m.named_parameters() if "lm_head" not in n)  # noqa: E731
    print(f"{'π0.5' if cfg.pi05 else 'π0'} llm {cfg.llm.width}x{cfg.llm.mlp_dim}, expert {cfg.expert.width}, "
          f"vit {cfg.siglip.width}x{cfg.siglip.depth}, prefix {cfg.prefix_len} tokens, batch {args.batch}, "
          f"{args.num_steps} steps; params teacher {n_params(teacher) / 1e6:.1f}M "
          f"student {n_params(student) / 1e6:.1f}M; "
          f"torch threads {torch.get_num_threads()}")

    runners = {}
    for name, model in (("teacher", teacher), ("student", student)):
        runners[("pytorch eager", name)] = lambda m=model: m.sample_actions(obs, noise=noise, num_steps=args.num_steps)
    tmp = tempfile.TemporaryDirectory()
    if not args.no_onnx:
        for name, model in (("teacher", teacher), ("student", student)):
            for mode in [m for m in args.onnx_modes.split(",") if m]:
                t0 = time.perf_counter()
                files = onnx_graph.export_onnx(model, pathlib.Path(tmp.name) / f"{name}_{mode}.onnx", mode=mode,
                                                num_steps=args.num_steps)
                export_s = time.perf_counter() - t0
                pol = OnnxPolicy(files[0], threads=args.threads or None)
                runners[(f"onnxruntime {mode}", name)] = lambda p=pol: p.infer(obs, noise=noise)
                print(f"  exported {name} {mode} in {export_s:.0f} s")
    for fn in runners.values():  # warm-up
        fn()
    times = {k: [] for k in runners}
    for _ in range(args.repeats):  # interleaved, so load changes hit teacher and student alike
        for k, fn in runners.items():
            times[k].append(_median_ms(fn, 1))
    print(f"\n| runtime | teacher ({args.teacher_depth} layers) ms "
          f"| student ({lmap.student_depth} layers) ms | speed-up |")
    print("|---|---|---|---|")
    for rt in dict.fromkeys(k[0] for k in runners):
        t, s = statistics.median(times[(rt, "teacher")]), statistics.median(times[(rt, "student")])
        print(f"| {rt} | {t:.1f} | {s:.1f} | {t / s:.2f}x |")
    tmp.cleanup()
    return times

