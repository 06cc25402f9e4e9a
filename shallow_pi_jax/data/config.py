"""The data pipeline's configuration (`config.data` in an experiment file).

`DataConfig` is a frozen dataclass; `DataConfig.from_any` also takes the ml_collections ConfigDict
(or plain dict) an experiment file builds, e.g. starting from `default_config()`:

    config.data = shallow_pi_jax.data.config.default_config()
    config.data.datasets = [dict(name="libero_10_no_noops", data_dir="/data/rlds", mapping="libero")]
    config.data.norm_stats_path = "/data/assets/libero/norm_stats.json"
    config.data.tokenizer_path = "/data/paligemma_tokenizer.model"
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping as _AbcMapping
from typing import Any

from shallow_pi_jax.data.mappings import OPENPI_CAMERAS, Mapping, resolve_mapping


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str                      # tfds name (may include a version, "libero_10:1.0.0")
    data_dir: str | None = None    # folder that holds <name>/<version>/
    mapping: Any = "libero"        # built-in name, dict, or Mapping
    weight: float = 1.0            # sampling weight in a mixture (normalised over datasets)
    split: str = "train"
    norm_stats: str | None = None  # overrides DataConfig.norm_stats_path for this dataset
    delta_action_mask: tuple[bool, ...] | None = None  # overrides DataConfig.delta_action_mask

    def __post_init__(self):
        if not self.name:
            raise ValueError("datasets[].name: expected a tfds dataset name, got an empty string")
        if not self.weight > 0:
            raise ValueError(f"datasets[{self.name!r}].weight: expected > 0, got {self.weight}")
        object.__setattr__(self, "mapping", resolve_mapping(self.mapping))
        if self.delta_action_mask is not None:
            object.__setattr__(self, "delta_action_mask", tuple(bool(b) for b in self.delta_action_mask))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    datasets: tuple[DatasetSpec, ...]
    batch_size: int = 32               # per process
    horizon: int = 50                  # action chunk length (openpi: 50 for pi0, 10 for pi05 LIBERO)
    action_dim: int = 32               # the model's (padded) action / state dim
    image_size: int = 224              # square resolution R of every camera
    max_token_len: int = 48            # openpi: 48 for pi0, 200 for pi05
    tokenizer_path: str = ""           # PaliGemma sentencepiece model
    norm_stats_path: str | None = None  # openpi norm_stats.json (or the folder holding it)
    pi05: bool = False
    use_quantile_norm: bool | None = None      # None → pi05
    discrete_state_input: bool | None = None   # None → pi05 (state as 256-bin tokens in the prompt)
    augment: bool = True               # crop/rotate (non-wrist) + colour jitter, training only
    shuffle_buffer: int = 10_000       # frames, per dataset
    seed: int = 0
    skip_bad_episodes: bool = False    # False: bad episodes raise; True: counted, logged, skipped
    delta_action_mask: tuple[bool, ...] | None = None  # openpi DeltaActions mask (True = delta dim)
    default_prompt: str | None = None  # used where a dataset has no (or an empty) instruction
    cameras: tuple[str, ...] = OPENPI_CAMERAS
    process_index: int | None = None   # None → jax.process_index()
    process_count: int | None = None   # None → jax.process_count()
    num_parallel_calls: int = -1       # -1 = tf.data.AUTOTUNE
    prefetch: int = 2                  # batches

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("data.datasets: expected at least one dataset, got none")
        for field in ("batch_size", "horizon", "action_dim", "image_size", "max_token_len", "shuffle_buffer"):
            if int(getattr(self, field)) <= 0:
                raise ValueError(f"data.{field}: expected a positive int, got {getattr(self, field)}")
        for spec in self.datasets:
            for cam in spec.mapping.camera_names:
                if cam not in self.cameras:
                    raise ValueError(f"datasets[{spec.name!r}].mapping.cameras: camera '{cam}' is not one of "
                                     f"data.cameras {self.cameras}")
        if self.delta_action_mask is not None:
            object.__setattr__(self, "delta_action_mask", tuple(bool(b) for b in self.delta_action_mask))

    @property
    def quantile_norm(self) -> bool:
        return self.pi05 if self.use_quantile_norm is None else bool(self.use_quantile_norm)

    @property
    def state_in_prompt(self) -> bool:
        return self.pi05 if self.discrete_state_input is None else bool(self.discrete_state_input)

    def delta_mask_for(self, spec: DatasetSpec) -> tuple[bool, ...] | None:
        return spec.delta_action_mask if spec.delta_action_mask is not None else self.delta_action_mask

    def norm_stats_for(self, spec: DatasetSpec) -> str | None:
        return spec.norm_stats or self.norm_stats_path

    def shard(self) -> tuple[int, int]:
        index, count = self.process_index, self.process_count
        if index is None or count is None:
            import jax  # only when the config leaves it open; keeps the data package jax-free otherwise

            index = jax.process_index() if index is None else index
            count = jax.process_count() if count is None else count
        if not 0 <= index < count:
            raise ValueError(f"data.process_index: expected 0 <= index < process_count={count}, got {index}")
        return int(index), int(count)

    @classmethod
    def from_any(cls, cfg) -> DataConfig:
        """Accept a DataConfig, an ml_collections ConfigDict or a plain dict."""
        if isinstance(cfg, DataConfig):
            return cfg
        if hasattr(cfg, "to_dict"):
            cfg = cfg.to_dict()
        if not isinstance(cfg, _AbcMapping):
            raise ValueError(f"data config: expected DataConfig, ConfigDict or dict, got {type(cfg).__name__}")
        d = dict(cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ValueError(f"data.{key}: unknown field (expected one of {sorted(known)})")
        if "datasets" not in d:
            raise ValueError("data.datasets: missing (expected a list of {name, data_dir, mapping, weight})")
        specs = []
        for i, item in enumerate(d["datasets"]):
            if isinstance(item, DatasetSpec):
                specs.append(item)
                continue
            if hasattr(item, "to_dict"):
                item = item.to_dict()
            item = dict(item)
            spec_known = {f.name for f in dataclasses.fields(DatasetSpec)}
            for key in item:
                if key not in spec_known:
                    raise ValueError(f"data.datasets[{i}].{key}: unknown field (expected one of {sorted(spec_known)})")
            specs.append(DatasetSpec(**item))
        d["datasets"] = tuple(specs)
        if d.get("cameras") is not None:
            d["cameras"] = tuple(d["cameras"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["datasets"] = [
            {**dataclasses.asdict(s), "mapping": s.mapping.to_dict() if isinstance(s.mapping, Mapping) else s.mapping}
            for s in self.datasets
        ]
        return d


def default_config():
    """A ConfigDict with every field, for experiment files (`config.data = default_config()`)."""
    import ml_collections

    c = ml_collections.ConfigDict()
    c.datasets = [dict(name="libero_10_no_noops", data_dir="", mapping="libero", weight=1.0, split="train",
                       norm_stats=None, delta_action_mask=None)]
    for f in dataclasses.fields(DataConfig):
        if f.name == "datasets":
            continue
        default = f.default
        if isinstance(default, tuple):
            default = list(default)
        c[f.name] = default
    return c
