"""The embedded default: offline demo data, tokenizer, norm stats and teacher for `...:demo` configs.

Experiment configs mark these with the placeholder "demo"; `resolve(config)` replaces them with
real paths, building what is missing on first use (seconds for the data; the teacher is shipped in
the package, and trained with this repo's trainer if it is ever missing).
"""
from __future__ import annotations

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


def demo_teacher(config) -> pathlib.Path:
    """params/ of the demo teacher: shipped in the package, else trained here once and cached."""
    shipped = PACKAGE_TEACHER / "params"
    if shipped.exists():
        return shipped
    built = cache_dir() / "demo_teacher"
    if not (built / "params").exists():
        from shallow_pi_jax import configs, train

        print(f"demo teacher not found; training it once into {built} (plain flow matching, 18 layers)")
        tc = configs.teacher_config("demo" if config.model.pi05 else "demo,pi0")
        train.run(tc, built / "run")
        (built / "run" / "student").rename(built / "export")
        (built / "export" / "params").rename(built / "params")
        (built / "assets").mkdir(exist_ok=True)
        for f in (built / "export" / "assets").iterdir():
            f.rename(built / "assets" / f.name)
    return built / "params"

