"""The embedded default: offline demo data, tokenizer, norm stats and teacher for `...:demo` configs.

Experiment configs mark these with the placeholder "demo"; `resolve(config)` replaces them with
real paths, building what is missing on first use (seconds for the data; the teacher is shipped in
the package, and trained with this repo's trainer if it is ever missing).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib

import ml_collections

DEMO = "demo"
PACKAGE_TEACHER = pathlib.Path(__file__).parent / "assets" / "demo_teacher"


def cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("SHALLOW_PI_CACHE", "~/.cache/shallow_pi_jax")).expanduser()


def _dataset():
    from shallow_pi_jax.sim.demo_dataset import build_demo_dataset

    # Our own cache: a build from an older generator is replaced (with its norm stats) rather than refused.
    return build_demo_dataset(cache_dir() / "demo_data", overwrite=True)


def norm_stats_path(data_config) -> pathlib.Path:
    """Norm stats of the demo dataset, computed once (numpy's mean/std/q01/q99) and cached."""
    from shallow_pi_jax.data import norm_stats
    from shallow_pi_jax.data.compute_stats import compute
    from shallow_pi_jax.data.config import DataConfig

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
    ds = _dataset()
    for d in data.datasets:
        if d.get("data_dir") == DEMO:
            d["data_dir"] = str(ds.data_dir)
    if data.tokenizer_path == DEMO:
        data.tokenizer_path = str(ds.tokenizer_path)
    if config.teacher.params == DEMO:
        config.teacher.params = str(demo_teacher(config))
        if data.norm_stats_path == DEMO:  # the teacher's own stats: the student must see its inputs
            data.norm_stats_path = str(pathlib.Path(config.teacher.params).parent / "assets" / "norm_stats.json")
    if data.norm_stats_path == DEMO:
        data.norm_stats_path = str(norm_stats_path(data))
    return config


def _model_key(model: dict) -> str:
    from shallow_pi_jax.models.config import ModelConfig

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
    shipped = PACKAGE_TEACHER / "params"
    if shipped.exists() and _model_key(json.loads((PACKAGE_TEACHER / "model_config.json").read_text())) == want:
        return shipped
    built = built_teacher_dir(config.model)
    if not (built / "params").exists():
        from shallow_pi_jax import configs, train

        print(f"no demo teacher for this architecture; training it once into {built} (plain flow matching)")
        # The architecture (π0 or π0.5 included) and the data transforms both come from config.model.
        tc = configs.teacher_config("demo")
        tc.model = ml_collections.ConfigDict(dict(config.model))
        configs.match_data_to_model(tc.data, tc.model)
        train.run(tc, built / "run")
        export = built / "run" / "student"
        for name in ("assets", "model_config.json", "params"):  # params last: its presence means complete
            (export / name).rename(built / name)
    return built / "params"
