"""The embedded default: offline demo data, tokenizer, norm stats and teacher for `...:demo` configs.

Experiment configs mark these with the placeholder "demo"; `prepare(plan)` replaces them with real
paths, building what is missing on first use (seconds for the data; the teacher is shipped in the
package, and trained with this repo's trainer if it is ever missing). The trainer calls it after
resolving the config and before training: a step of its own, never a side effect of resolving.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import ml_collections

from shallow_pi_jax.checkpoint import policy_dir
from shallow_pi_jax.data import norm_stats
from shallow_pi_jax.data.config import DataConfig
from shallow_pi_jax.data.dataset_stats import compute
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.sim.demo_dataset import cache_dir, cached_demo_dataset
from shallow_pi_jax.training import loop, recipes, records
from shallow_pi_jax.training import plan as run_plan
from shallow_pi_jax.training.plan import RunPlan

DEMO = recipes.DEMO
PACKAGE_TEACHER = pathlib.Path(__file__).parent / "assets" / "demo_teacher"


def norm_stats_path(data: DataConfig) -> pathlib.Path:
    """Norm stats of the demo dataset, computed once (numpy's mean/std/q01/q99) and cached."""
    path = cache_dir() / "demo_data" / "norm_stats.json"
    if not path.exists():
        norm_stats.save(compute(data, data.datasets, progress=False), path)
    return path


def uses_demo(plan: RunPlan) -> bool:
    return any(d.data_dir == DEMO for d in plan.data.datasets) or DEMO in (
        plan.data.tokenizer_path, plan.data.norm_stats_path, plan.teacher_params)


def prepare(plan: RunPlan) -> RunPlan:
    """`plan` with every "demo" placeholder replaced by a real path (the data, tokenizer, teacher and norm
    stats built or found), and the student's policy record then read from the real teacher."""
    if not uses_demo(plan):
        return plan
    ds = cached_demo_dataset()
    data = plan.data
    data = dataclasses.replace(data, datasets=tuple(
        dataclasses.replace(d, data_dir=str(ds.data_dir)) if d.data_dir == DEMO else d for d in data.datasets))
    if data.tokenizer_path == DEMO:
        data = dataclasses.replace(data, tokenizer_path=str(ds.tokenizer_path))
    teacher = plan.teacher_params
    if teacher == DEMO:
        teacher = str(demo_teacher(plan.model))
        if data.norm_stats_path == DEMO:  # the teacher's own stats: the student must see its inputs
            data = dataclasses.replace(data, norm_stats_path=str(policy_dir.read(teacher).norm_stats()))
    if data.norm_stats_path == DEMO:
        data = dataclasses.replace(data, norm_stats_path=str(norm_stats_path(data)))
    return dataclasses.replace(plan, config_json=_config_json(plan.config_json, data, teacher), data=data,
                               teacher_params=teacher,
                               record=records.student_record(data, teacher, plan.teacher_preset))


def _config_json(config_json: str, data: DataConfig, teacher: str) -> str:
    """The run's config.json with the placeholders replaced by `data`'s and `teacher`'s paths."""
    config = ml_collections.ConfigDict(json.loads(config_json))
    for d, spec in zip(config.data.datasets, data.datasets):
        d["data_dir"] = spec.data_dir
    config.data.tokenizer_path, config.data.norm_stats_path = data.tokenizer_path, data.norm_stats_path
    config.teacher.params = teacher
    return config.to_json_best_effort(indent=1) + "\n"


def _model_key(model: ModelConfig) -> str:
    return json.dumps(model.to_dict(), sort_keys=True)


def built_teacher_dir(model: ModelConfig) -> pathlib.Path:
    """Where a demo teacher of this architecture is trained and cached when none is shipped."""
    return cache_dir() / f"demo_teacher_{hashlib.sha256(_model_key(model).encode()).hexdigest()[:12]}"


def demo_teacher(model: ModelConfig) -> pathlib.Path:
    """params/ of a demo teacher with exactly the architecture `model`.

    The shipped one when it matches; otherwise (e.g. `demo,pi0` against the shipped π0.5, or a
    deleted asset) one trained here once and cached under a name derived from the architecture.
    """
    want = _model_key(model)
    shipped = policy_dir.read(PACKAGE_TEACHER) if (PACKAGE_TEACHER / policy_dir.PARAMS).exists() else None
    if shipped is not None and shipped.config is not None and _model_key(shipped.config) == want:
        return shipped.params_dir
    built = built_teacher_dir(model)
    if not (built / policy_dir.PARAMS).exists():
        print(f"no demo teacher for this architecture; training it once into {built} (plain flow matching)")
        # The architecture (π0 or π0.5 included) and the data transforms both come from `model`.
        tc = recipes.teacher_config("size=demo")
        tc.model = ml_collections.ConfigDict(model.to_dict())
        recipes.match_data_to_model(tc.data, tc.model)
        loop.run(prepare(run_plan.resolve(tc)), built / "run")
        policy_dir.move(built / "run" / "student", built)
    return built / policy_dir.PARAMS
