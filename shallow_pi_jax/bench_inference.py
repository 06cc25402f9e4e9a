r"""Teacher vs student inference cost: FLOPs (XLA cost analysis) split into vision / prefix /
denoising, and measured latency, side by side with ratios.

    python -m shallow_pi_jax.bench_inference                       # π0.5 real sizes, L18 vs L6, 10 steps, 3 cameras
    python -m shallow_pi_jax.bench_inference --student-depth 4 --num-steps 5 --out bench.json
    python -m shallow_pi_jax.bench_inference --latency-size real --latency-dtype bfloat16   # on a GPU host
    python -m shallow_pi_jax.bench_inference --flops-size demo --latency-size demo          # seconds, any machine
    python -m shallow_pi_jax.bench_inference --checkpoint /tmp/shallow_pi_demo              # a trained student

FLOPs need no weights (abstract params) and are counted with every layer/step scan unrolled, since
XLA's cost analysis counts a loop body once. Three settings are reported: openpi's (all 3 cameras,
the whole padded prompt), LIBERO's 2 cameras with SigLIP skipped on the masked right wrist (its
tokens kept), and the compacted prefix this project's Policy runs: the masked camera's tokens and
the prompt padding past the bucket that holds a --prompt-tokens prompt leave the prefix (exact, see
models/prefix.py). A table puts openpi's teacher next to the compacted teacher and student.

--checkpoint takes any policy directory (a training run's --workdir, a student directory, an
openpi checkpoint or its params/) and replaces the named sizes with its model: the student is
that model at its own depth, the teacher the same model at its layer map's teacher depth
(--teacher-depth otherwise). A model with other than 3 cameras is reported with all of them.

Latency is the wall time of one jitted `sample_actions` call (batch 1, random weights, after
warm-up; median of --repeats) on the machine it runs on, with openpi's prefix and with the
compacted one. Each model runs in a child process of its own, its params drawn leaf by leaf
directly in the timed dtype, so one model is in memory at a time and the peak RSS reported is that
model's. A table puts each program's latency ratio (openpi's teacher / it) next to its FLOP ratio.
The real sizes take minutes per call on a small CPU, so the default latency size is `real` on an
accelerator and `demo` (the tiny embedded demo model) on CPU; the table says which:

    python -m shallow_pi_jax.bench_inference --skip-flops --latency-size real --latency-dtype float32 \
        --repeats 1 --warmup 0       # a 24 GiB CPU host: the float32 teacher's params are 13.4 GB
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from shallow_pi_jax import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pi0", action="store_true", help="π0 instead of π0.5")
    p.add_argument("--checkpoint", "--params", dest="checkpoint", default=None,
                   help="a policy directory: its model instead of the named sizes (see above)")
    p.add_argument("--student-depth", type=int, default=None,
                   help="student layers (default: 6, or the --checkpoint's depth)")
    p.add_argument("--teacher-depth", type=int, default=None, help="teacher layers (default: the config's, 18)")
    p.add_argument("--num-steps", type=int, default=10, help="flow integration steps (default: 10)")
    p.add_argument("--horizon", "--action-horizon", dest="horizon", type=int, default=None,
                   help="action chunk (default: 10 real, config's otherwise; an openpi checkpoint needs it)")
    p.add_argument("--max-token-len", type=int, default=None, help="prompt tokens (default: 200 π0.5, 48 π0)")
    p.add_argument("--prompt-tokens", type=int, default=20,
                   help="valid prompt tokens of the compacted setting; the prefix keeps the smallest bucket "
                        "(32/64/128/max) that holds them (default: 20, a LIBERO instruction with [bos] and '\\n')")
    p.add_argument("--flops-size", default="real", choices=["real", "demo", "tiny"],
                   help="model sizes for the FLOP count (default: real)")
    p.add_argument("--latency-size", default=None, choices=["real", "demo", "tiny"],
                   help="model sizes for timing (default: real on an accelerator, demo on CPU)")
    p.add_argument("--latency-dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype for timing (default: the size's config, float32)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls (default: 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls after compiling (default: 3)")
    p.add_argument("--fast-flops", action="store_true",
                   help="cost analysis of the lowered (unoptimised) HLO: no XLA compile, ~1%% different")
    p.add_argument("--skip-flops", action="store_true")
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--out", type=pathlib.Path, default=None, help="write the results as JSON here")
    return p


def main(argv=None) -> int:
    args = cli.parse(build_parser(), argv)
    for flag in ("student_depth", "teacher_depth", "num_steps", "repeats", "prompt_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise cli.UsageError(f"--{flag.replace('_', '-')}: expected >= 1, got {value}")
    # Imported once the flags are parsed, so that --help answers without loading JAX.
    from shallow_pi_jax.perf.inference_cost import bench_inference

    bench_inference(args)
    return 0


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
