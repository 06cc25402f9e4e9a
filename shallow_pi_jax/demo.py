"""The embedded default: offline demo data, tokenizer, norm stats and teacher for `...:demo` configs.

Experiment configs mark these with the placeholder "demo"; `resolve(config)` replaces them with
real paths, building what is missing on first use (seconds for the data; the teacher is shipped in
the package, and trained with this repo's trainer if it is ever missing).
"""
from __future__ import annotations

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
from shallow_pi_jax.training import config as train_config
from shallow_pi_jax.training import loop

DEMO = "demo"
PACKAGE_TEACHER = pathlib.Path(__file__).parent / "assets" / "demo_teacher"


def norm_stats_path(data_config) -> pathlib.Path:
    """Norm stats of the demo dataset, computed once (numpy's mean/std/q01/q99) and cached."""
    path = cache_dir() / "demo_data" / "norm_stats.json"
    if not path.exists():
        cfg = DataConfig.from_any(data_config)
        norm_stats.save(compute(cfg, cfg.datasets, progress=False), path)
    return path


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Replace every "demo" placeholder of `config` with a real path (a copy is returned)."""
    config = ml_collections.ConfigDict(config.to_dict())
    data = config.data
    uses_demo = any(d.get("data_dir") == DEMO for d in data.datasets) or DEMO in (
        data.tokenizer_path, data.norm_stats_path, config.teacher.params)
    if not uses_demo:
        return config
    ds = cached_demo_dataset()
    for d in data.datasets:
        if d.get("data_dir") == DEMO:
            d["data_dir"] = str(ds.data_dir)
    if data.tokenizer_path == DEMO:
        data.tokenizer_path = str(ds.tokenizer_path)
    if config.teacher.params == DEMO:
        config.teacher.params = str(demo_teacher(config))
        if data.norm_stats_path == DEMO:  # the teacher's own stats: the student must see its inputs
            data.norm_stats_path = str(policy_dir.read(config.teacher.params).norm_stats())
    if data.norm_stats_path == DEMO:
        data.norm_stats_path = str(norm_stats_path(data))
    return config


def _model_key(model: dict) -> str:
    return json.dumps(ModelConfig.from_dict(dict(model)).to_dict(), sort_keys=True)


def built_teacher_dir(model: dict) -> pathlib.Path:
    """Where a demo teacher of this architecture is trained and cached when none is shipped."""
    return cache_dir() / f"demo_teacher_{hashlib.sha256(_model_key(model).encode()).hexdigest()[:12]}"


def demo_teacher(config) -> pathlib.Path:
    """params/ of a demo teacher with exactly `config.model`'s architecture.

    The shipped one when it matches; otherwise (e.g. `demo,pi0` against the shipped π0.5, or a
    deleted asset) one trained here once and cached under a name derived from the architecture.
    """
    want = _model_key(config.model)
    shipped = policy_dir.read(PACKAGE_TEACHER) if (PACKAGE_TEACHER / policy_dir.PARAMS).exists() else None
    if shipped is not None and shipped.config is not None and _model_key(shipped.config.to_dict()) == want:
        return shipped.params_dir
    built = built_teacher_dir(config.model)
    if not (built / policy_dir.PARAMS).exists():
        print(f"no demo teacher for this architecture; training it once into {built} (plain flow matching)")
        # The architecture (π0 or π0.5 included) and the data transforms both come from config.model.
        tc = train_config.teacher_config("size=demo")
        tc.model = ml_collections.ConfigDict(dict(config.model))
        train_config.match_data_to_model(tc.data, tc.model)
        loop.run(resolve(tc), built / "run")
        policy_dir.move(built / "run" / "student", built)
    return built / policy_dir.PARAMS
