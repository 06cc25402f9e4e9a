"""A shallow student's policy directory, cut from its teacher's checkpoint (`make_student`'s work).

    teacher = policy_dir.read("CKPT/params")
    write_student(teacher, "students/pi05_l6", 6, record=teacher.record)   # 18 layers -> 0,3,7,10,14,17

The same teacher layers initialise the Gemma backbone and the action expert; everything outside
the layer stacks is copied. A LoRA fine-tuned teacher gives the student of its merged weights (each
LoRA pair merged into its weight as it is read, checkpoint/lora.py). The teacher is read leaf by
leaf, so peak memory stays near the size of the student (see docs/students.md). The directory is
built in a hidden sibling and renamed at the end: all or nothing.
"""
from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from tqdm import tqdm

from shallow_pi_jax import fileio
from shallow_pi_jax.checkpoint import openpi_params, policy_dir, policy_record
from shallow_pi_jax.checkpoint.layer_reader import ParamsReader
from shallow_pi_jax.models.config import is_pi05_tree
from shallow_pi_jax.training import student_init
from shallow_pi_jax.training.layer_map import make_layer_map

DTYPES = {"keep": None, "float32": np.float32, "bfloat16": jax.numpy.bfloat16}


def student_record(teacher: policy_dir.PolicyDir, openpi_config: str | None) -> policy_record.PolicyRecord | None:
    """How the student sees the world: as its teacher (layers do not change a policy's inputs and outputs)."""
    named = policy_record.openpi(openpi_config) if openpi_config else None
    record, _ = policy_record.resolve(teacher.record, str(teacher.root / policy_record.FILE), named,
                                      f"--openpi-config {openpi_config}", named_wins=True)
    if record is None:
        return None
    pi05 = is_pi05_tree(teacher.shapes)
    if record.pi05 != pi05:
        raise ValueError(f"pi05: {record.source or 'the policy record'} says {record.pi05}, the teacher's params "
                         f"({teacher.params_dir}) are {'π0.5' if pi05 else 'π0'}")
    return dataclasses.replace(record, source=f"teacher {teacher.root} ({record.source})")


def write_student(teacher: policy_dir.PolicyDir, out, depth: int | None, strategy: str = "uniform",
                  layers: Sequence[int] | None = None, *, record: policy_record.PolicyRecord | None = None,
                  dtype: str = "keep", compress: bool = False, overwrite: bool = False, verify: bool = True,
                  quiet: bool = False) -> pathlib.Path:
    """Write the student of `teacher` to `out`, as a policy directory: `depth` layers chosen by
    `strategy`, or the teacher's `layers` (training.layer_map.make_layer_map).

    `record`: the student's policy_record.json (how it sees the world: its teacher's). `dtype`: a key
    of DTYPES. `verify`: check the teacher's files against its checksums.json."""
    teacher_dir = teacher.params_dir
    reader = ParamsReader(teacher_dir, verify=verify)
    stored = student_init.stack_depth({p: tuple(s.shape) for p, s in reader.shapes.items()})
    lmap = make_layer_map(stored, depth, strategy, layers)
    out = pathlib.Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise ValueError(f"--out: {out} already exists (pass --overwrite to replace it)")
    if out == teacher_dir or out in teacher_dir.parents:
        raise ValueError(f"--out: {out} would replace the teacher checkpoint {teacher_dir}")
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"teacher {teacher_dir}: {lmap.teacher_depth} layers -> student {lmap.student_depth} layers "
        f"{list(lmap.indices)} ({lmap.strategy})")
    if reader.lora:
        say(f"teacher is LoRA fine-tuned: {len(reader.lora)} LoRA pairs merged into the student's weights")

    with fileio.atomic_dir(out, overwrite=True) as tmp:
        with tqdm(total=openpi_params.directory_size(teacher_dir), unit="B", unit_scale=True,
                  desc="checksum teacher", disable=quiet) as bar:
            digest = openpi_params.checkpoint_digest(teacher_dir, progress=bar.update)

        cpu = jax.devices("cpu")[0]
        flat, n_teacher = {}, 0
        leaves = student_init.iter_student_leaves(reader, lmap, dtype=DTYPES[dtype])
        for path, leaf in tqdm(leaves, total=len(reader.paths), desc="student leaves", unit="leaf", disable=quiet):
            # Hand each leaf to jax as it is read so only the student is held, once.
            flat[path] = jax.device_put(leaf, cpu)
            del leaf
            n_teacher += int(np.prod(reader.shapes[path].shape))
        n_student = sum(int(x.size) for x in flat.values())
        say("writing student params ...")
        assets = teacher.root / policy_dir.ASSETS
        copy_assets = teacher.root != teacher_dir and assets.is_dir()
        config = teacher.config.with_depth(lmap.student_depth) if teacher.config is not None else None
        lineage = policy_dir.Lineage(teacher=str(teacher_dir), teacher_sha256=digest, teacher_params=n_teacher,
                                     teacher_lora_pairs_merged=len(reader.lora), dtype=dtype)
        # The reader checked every teacher leaf it read for NaN/inf: the student's are its.
        policy_dir.write(tmp, openpi_params.unflatten_params(flat), config, layer_map=lmap.to_dict(),
                         lineage=lineage, assets=assets if copy_assets else None, check_finite=False,
                         compress=compress, record=record)
        del flat
        if copy_assets:
            say(f"copied {assets}")
    # Always printed, quiet or not: it is where the output went (pipelines read it).
    print(f"student written to {out}: {n_student / 1e6:.1f}M params (teacher {n_teacher / 1e6:.1f}M)")
    return out
