"""Norm stats of RLDS and LeRobot datasets, on the data training sees (python -m shallow_pi_jax.compute_norm_stats).

State: one row per frame. Actions: every row of every frame's action chunk (clamped at the episode
end, after delta actions, after DROID's idle filter), exactly what openpi's compute_norm_stats feeds
its statistics. mean/std/q01/q99 are numpy's on those rows (population std, linear quantiles).
Memory: 4 * (S + H * A) bytes per frame; cap it with max_frames on very large datasets.
"""
from __future__ import annotations

import pathlib

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from shallow_pi_jax.data import lerobot, rlds
from shallow_pi_jax.data import norm_stats as _ns
from shallow_pi_jax.data.config import DataConfig, DatasetSpec
from shallow_pi_jax.data.episode_log import EpisodeLog


def collect(cfg: DataConfig, specs: tuple[DatasetSpec, ...], max_frames: int | None = None,
            progress: bool = True) -> tuple[np.ndarray, np.ndarray, EpisodeLog]:
    """(state [N, S], action rows [N * H, A], episode log) over the datasets, in file order."""
    elog = EpisodeLog()
    states, chunks = [], []
    frames = 0
    for spec in specs:
        total = None
        if spec.format == "lerobot":
            ds = lerobot.raw_chunks(spec, cfg, elog)
            total = lerobot.num_episodes(spec)
        else:
            ds = rlds.raw_chunks(spec, cfg, elog)
            try:
                total = rlds.load_builder(spec).info.splits[spec.split].num_examples
            except Exception:  # a split expression such as "train[:10%]": no total for the bar
                pass
        bar = tqdm(total=total, desc=f"norm stats {spec.name}", unit="episode", disable=not progress)
        it = ds.as_numpy_iterator()
        while max_frames is None or frames < max_frames:
            try:
                ep = next(it)
            except StopIteration:
                break
            except tf.errors.OpError as e:
                problem = elog.error_for(e.message)
                if problem:
                    raise ValueError(problem) from None
                raise ValueError(f"reading dataset {spec.name!r} failed: {e.message}") from e
            states.append(ep["state"])
            chunks.append(ep["actions"])
            frames += len(ep["state"])
            bar.update(1)
        bar.close()
    if not states or frames == 0:
        raise ValueError(f"datasets {[s.name for s in specs]}: no frames to compute statistics from "
                         f"({elog.num_skipped} bad episodes skipped)")
    for what, arrays in (("state", states), ("actions", chunks)):
        dims = {a.shape[-1] for a in arrays}
        if len(dims) > 1:
            raise ValueError(f"datasets {[s.name for s in specs]}: '{what}' dims differ across episodes/datasets "
                             f"({sorted(dims)}); compute stats per dataset (DatasetSpec.norm_stats)")
    state = np.concatenate(states)[:max_frames]
    action_rows = np.concatenate(chunks)[:max_frames]
    return state, action_rows.reshape(-1, action_rows.shape[-1]), elog


def compute(cfg: DataConfig, specs: tuple[DatasetSpec, ...], max_frames: int | None = None,
            progress: bool = True) -> dict[str, _ns.NormStats]:
    state, actions, _ = collect(cfg, specs, max_frames, progress)
    return {"state": _ns.compute(state), "actions": _ns.compute(actions)}


def write_norm_stats(cfg: DataConfig, specs: tuple[DatasetSpec, ...], path, max_frames: int | None = None,
                     progress: bool = True) -> pathlib.Path:
    """openpi's norm_stats.json of `specs` (collect) at `path`; says what it wrote."""
    state, actions, elog = collect(cfg, specs, max_frames, progress=progress)
    written = _ns.save({"state": _ns.compute(state), "actions": _ns.compute(actions)}, path)
    print(f"wrote {written}: {len(state)} frames, {len(actions)} action rows, state dim "
          f"{state.shape[-1]}, action dim {actions.shape[-1]}, {elog.num_skipped} bad episodes skipped")
    return written
