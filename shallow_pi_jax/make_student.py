"""Make a shallow student checkpoint from an openpi teacher checkpoint.

    python -m shallow_pi_jax.make_student --teacher ~/.cache/openpi/openpi-assets/checkpoints/pi05_base/params \\
        --depth 6 --out students/pi05_l6
    python -m shallow_pi_jax.make_student --teacher CKPT/params --layers 0,3,7,10,14,17 --out DIR
    python -m shallow_pi_jax.make_student --teacher CKPT/params --depth 4 --strategy last --out DIR

Writes, all or nothing (built in a hidden sibling directory and renamed at the end):
  DIR/params/          the student in openpi's layout (orbax item {"params": pure dict})
  DIR/layer_map.json   teacher/student depth, teacher layer indices, strategy, teacher path and sha256
                       (checkpoint/policy_dir.py: one schema for every writer)
  DIR/model_config.json  the teacher's model_config.json at the student's depth, when the teacher has one
  DIR/assets/          a copy of the teacher's assets/ (norm stats), when the teacher has one
  DIR/policy_record.json  how the policy sees the world: the teacher's (or --openpi-config's), when known
  DIR/checksums.json   sha256 and size of every file above (checked by every reader)

The same teacher layers initialise the Gemma backbone and the action expert; everything outside
the layer stacks is copied. A LoRA fine-tuned teacher (openpi's `*_lora` variants) gives the
student of its merged weights: each LoRA pair is merged into its weight as it is read
(checkpoint/lora.py), and the student has no LoRA leaves. The teacher is read leaf by leaf, so peak
memory stays near the size of the student (see docs/students.md). The work is
training/student_checkpoint.py's write_student.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from shallow_pi_jax import cli
from shallow_pi_jax.checkpoint import policy_record
from shallow_pi_jax.training.layer_map import parse_layers

DTYPES = ("keep", "float32", "bfloat16")  # training/student_checkpoint.DTYPES


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Initialise a shallow pi0 / pi0.5 student from an openpi teacher checkpoint by "
                    "keeping a subset of its transformer layers (backbone and action expert alike).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--teacher", required=True,
                    help="teacher policy directory: openpi's CKPT or CKPT/params, a student directory, or a "
                         "training run's --workdir (its student/)")
    ap.add_argument("--out", required=True, help="output directory; must not exist unless --overwrite")
    ap.add_argument("--depth", type=int, default=None,
                    help="student depth (number of layers); optional with --layers")
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--strategy", choices=("uniform", "first", "last"), default="uniform",
                       help="uniform: round(linspace(0, L-1, depth)), round half to even (18->6: 0,3,7,10,14,17)")
    group.add_argument("--layers", default=None, help="explicit teacher layers, e.g. 0,3,7,10,14,17")
    ap.add_argument("--dtype", choices=DTYPES, default="keep",
                    help="dtype of the student's params (keep = the teacher's stored dtype)")
    ap.add_argument("--compress", action="store_true",
                    help="zstd-compress the student's chunks like openpi's own saves (smaller files, "
                         "but the save then holds about one extra copy of the student in memory)")
    ap.add_argument("--openpi-config", default=None, choices=sorted(policy_record.OPENPI),
                    help="the openpi config an openpi teacher (no policy_record.json) was trained with: written "
                         "as the student's policy_record.json. A teacher's own record is copied; against it a "
                         "difference is an error")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    ap.add_argument("--no-checksums", action="store_true",
                    help="skip checking the checkpoint's files against its checksums.json (faster on huge checkpoints)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return cli.parse(ap, argv)


def make_student(args) -> pathlib.Path:
    # Imported once the flags are parsed, so that --help answers without loading JAX.
    from shallow_pi_jax.checkpoint import policy_dir
    from shallow_pi_jax.training import student_checkpoint

    teacher = policy_dir.read(cli.policy_path(args.teacher), verify=not args.no_checksums)
    record = student_checkpoint.student_record(teacher, args.openpi_config)
    layers = parse_layers(args.layers) if args.layers is not None else None
    if layers is None and args.depth is None:
        raise cli.UsageError("--depth: required unless --layers is given")
    return student_checkpoint.write_student(teacher, args.out, args.depth, args.strategy, layers, record=record,
                                            dtype=args.dtype, compress=args.compress, overwrite=args.overwrite,
                                            verify=not args.no_checksums, quiet=args.quiet)


def main(argv=None) -> int:
    make_student(parse_args(argv))
    return 0


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
