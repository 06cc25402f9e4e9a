"""Make a shallow student checkpoint from an openpi teacher checkpoint.

    python -m shallow_pi_jax.make_student --teacher ~/.cache/openpi/openpi-assets/checkpoints/pi05_base/params \\
        --depth 6 --out students/pi05_l6
    python -m shallow_pi_jax.make_student --teacher CKPT/params --layers 0,3,7,10,14,17 --out DIR
    python -m shallow_pi_jax.make_student --teacher CKPT/params --depth 4 --strategy last --out DIR

Writes, all or nothing (built in a hidden sibling directory and renamed at the end):
  DIR/params/          the student in openpi's layout (orbax item {"params": pure dict})
  DIR/layer_map.json   teacher/student depth, teacher layer indices, strategy, teacher path and sha256
  DIR/model_config.json  the teacher's model_config.json at the student's depth, when the teacher has one
  DIR/assets/          a copy of the teacher's assets/ (norm stats), when the teacher has one
  DIR/policy_record.json  how the policy sees the world: the teacher's (or --openpi-config's), when known
  DIR/checksums.json   sha256 and size of every file above (checked by every reader)

The same teacher layers initialise the Gemma backbone and the action expert; everything outside
the layer stacks is copied. A LoRA fine-tuned teacher (openpi's `*_lora` variants) gives the
student of its merged weights: each LoRA pair is merged into its weight as it is read
(checkpoint/lora.py), and the student has no LoRA leaves. The teacher is read leaf by leaf, so peak
memory stays near the size of the student (see docs/students.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shutil
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from shallow_pi_jax import cli, fileio
from shallow_pi_jax.checkpoint import openpi_params, policy_dir, policy_record
from shallow_pi_jax.checkpoint.layer_reader import ParamsReader
from shallow_pi_jax.models.config import is_pi05_tree
from shallow_pi_jax.training import layer_map as layer_maps
from shallow_pi_jax.training import student_init

DTYPES = {"keep": None, "float32": np.float32, "bfloat16": jax.numpy.bfloat16}


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
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="keep",
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


def build_layer_map(args, depth: int) -> layer_maps.LayerMap:
    layers = layer_maps.parse_layers(args.layers) if args.layers is not None else None
    if layers is None and args.depth is None:
        raise cli.UsageError("--depth: required unless --layers is given")
    return layer_maps.make_layer_map(depth, args.depth, args.strategy, layers)


def student_record(teacher: policy_dir.PolicyDir, openpi_config: str | None) -> policy_record.PolicyRecord | None:
    """How the student sees the world: as its teacher (layers do not change a policy's inputs and outputs)."""
    named = policy_record.openpi(openpi_config) if openpi_config else None
    record, _ = policy_record.resolve(teacher.record, str(teacher.root / policy_dir.RECORD), named,
                                      f"--openpi-config {openpi_config}", named_wins=True)
    if record is None:
        return None
    pi05 = is_pi05_tree(teacher.shapes)
    if record.pi05 != pi05:
        raise ValueError(f"pi05: {record.source or 'the policy record'} says {record.pi05}, the teacher's params "
                         f"({teacher.params_dir}) are {'π0.5' if pi05 else 'π0'}")
    return dataclasses.replace(record, source=f"teacher {teacher.root} ({record.source})")


def make_student(args) -> pathlib.Path:
    teacher = policy_dir.read(cli.policy_path(args.teacher), verify=not args.no_checksums)
    seen = student_record(teacher, args.openpi_config)
    teacher_dir = teacher.params_dir
    reader = ParamsReader(teacher_dir, verify=not args.no_checksums)
    depth = student_init.stack_depth({p: tuple(s.shape) for p, s in reader.shapes.items()})
    lmap = build_layer_map(args, depth)
    dtype = DTYPES[args.dtype]

    out = pathlib.Path(args.out).expanduser().resolve()
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out: {out} already exists (pass --overwrite to replace it)")
    if out == teacher_dir or out in teacher_dir.parents:
        raise ValueError(f"--out: {out} would replace the teacher checkpoint {teacher_dir}")
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    say(f"teacher {teacher_dir}: {depth} layers -> student {lmap.student_depth} layers "
        f"{list(lmap.indices)} ({lmap.strategy})")
    if reader.lora:
        say(f"teacher is LoRA fine-tuned: {len(reader.lora)} LoRA pairs merged into the student's weights")

    with fileio.atomic_dir(out, overwrite=True) as tmp:
        with tqdm(total=openpi_params.directory_size(teacher_dir), unit="B", unit_scale=True,
                  desc="checksum teacher", disable=args.quiet) as bar:
            digest = openpi_params.checkpoint_digest(teacher_dir, progress=bar.update)

        cpu = jax.devices("cpu")[0]
        flat, n_teacher, n_student = {}, 0, 0
        leaves = student_init.iter_student_leaves(reader, lmap, dtype=dtype)
        for path, leaf in tqdm(leaves, total=len(reader.paths), desc="student leaves", unit="leaf",
                               disable=args.quiet):
            # Hand each leaf to jax as it is read so only the student is held, once.
            flat[path] = jax.device_put(leaf, cpu)
            del leaf
            n_teacher += int(np.prod(reader.shapes[path].shape))
            n_student += int(np.prod(flat[path].shape))
        say("writing student params ...")
        openpi_params.save_params(openpi_params.unflatten_params(flat), tmp / "params", compress=args.compress)
        del flat

        assets = teacher.root / policy_dir.ASSETS
        if teacher.root != teacher_dir and assets.is_dir():
            shutil.copytree(assets, tmp / policy_dir.ASSETS)
            say(f"copied {assets}")
        if teacher.config is not None:
            fileio.write_json(tmp / policy_dir.MODEL_CONFIG, teacher.config.with_depth(lmap.student_depth).to_dict())
        record = {
            **lmap.to_dict(),
            "teacher": str(teacher_dir),
            "teacher_sha256": digest,
            "checksum": "sha256 over every file of the teacher params/ directory in sorted relative-path "
                        "order, hashing 'path\\0size\\0' then the bytes (openpi_params.checkpoint_digest)",
            "dtype": args.dtype,
            "teacher_params": n_teacher,
            "student_params": n_student,
            "applies_to": ["PaliGemma/llm/layers/* (Gemma backbone and action expert)"],
            "teacher_lora_pairs_merged": len(reader.lora),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        fileio.write_json(tmp / policy_dir.LAYER_MAP, record)
        if seen is not None:
            policy_record.write(tmp, seen)
        policy_dir.write_checksums(tmp)  # last: it covers every file above
    # Always printed, --quiet or not: it is where the output went (pipelines read it).
    print(f"student written to {out}: {n_student / 1e6:.1f}M params (teacher {n_teacher / 1e6:.1f}M)")
    return out


def main(argv=None) -> int:
    make_student(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
