"""The data pipeline's configuration (`config.data` in an experiment file).

`DataConfig` is a frozen dataclass; `DataConfig.from_any` also takes the ml_collections ConfigDict
(or plain dict) an experiment file builds, e.g. starting from `default_config()`:

    config.data = shallow_pi_jax.data.config.default_config()
    config.data.datasets = (dict(name="libero_10_no_noops", data_dir="/data/rlds", mapping="libero"),)
    config.data.norm_stats_path = "/data/assets/libero/norm_stats.json"
    config.data.tokenizer_path = "/data/paligemma_tokenizer.model"
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping as _AbcMapping
from typing import Any

from shallow_pi_jax.data.mappings import OPENPI_CAMERAS, Mapping, resolve_mapping

DATASET_FORMATS = ("rlds", "lerobot")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str                      # tfds name ("libero_10:1.0.0") or LeRobot repo id ("physical-intelligence/libero")
    data_dir: str | None = None    # rlds: holds <name>/<version>/; lerobot: holds <name>/meta/info.json, or is the root
    mapping: Any = "libero"        # built-in name, dict, or Mapping
    weight: float = 1.0            # sampling weight in a mixture (normalised over datasets)
    split: str = "train"
    norm_stats: str | None = None  # overrides DataConfig.norm_stats_path for this dataset
    delta_action_mask: tuple[bool, ...] | None = None  # overrides DataConfig.delta_action_mask
    format: str = "rlds"           # "rlds" (tensorflow-datasets) or "lerobot" (LeRobot v2.x parquet/mp4, lerobot.py)

    def __post_init__(self):
        if not self.name:
            raise ValueError("datasets[].name: expected a tfds dataset name, got an empty string")
        if self.format not in DATASET_FORMATS:
            raise ValueError(f"datasets[{self.name!r}].format: expected one of {DATASET_FORMATS}, got {self.format!r}")
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
    # Training reads num_streams independent streams (stream j: shard j of num_streams, its own shuffle and
    # augmentation seeds), B / num_streams examples each per batch; a process builds only its own streams.
    # The global batch then depends on num_streams, not on how the streams are spread over processes.
    # None → one stream per process (the trainer: one per device).
    num_streams: int | None = None
    num_parallel_calls: int = -1       # -1 = tf.data.AUTOTUNE
    prefetch: int = 2                  # batches

    def __post_init__(self):
        if not self.datasets:
            raise ValueError("data.datasets: expected at least one dataset, got none")
        for field in ("batch_size", "horizon", "action_dim", "image_size", "max_token_len", "shuffle_buffer"):
            if int(getattr(self, field)) <= 0:
                raise ValueError(f"data.{field}: expected a positive int, got {getattr(self, field)}")
        if self.num_streams is not None and not (isinstance(self.num_streams, int) and self.num_streams > 0):
            raise ValueError(f"data.num_streams: expected a positive int or None, got {self.num_streams!r}")
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

    def streams(self, ids=None) -> tuple[tuple[int, ...], int]:
        """(the stream indices this process builds, in batch order; num_streams).

        `ids` (the trainer's, from the device mesh) override the default: process i of n builds the
        i-th contiguous block of num_streams / n streams."""
        index, count = self.shard()
        total = count if self.num_streams is None else int(self.num_streams)
        if ids is None:
            if total % count:
                raise ValueError(f"data.num_streams: expected a multiple of the process count ({count}), got {total}")
            per = total // count
            ids = range(index * per, (index + 1) * per)
        ids = tuple(int(j) for j in ids)
        if not ids or len(set(ids)) != len(ids) or not all(0 <= j < total for j in ids):
            raise ValueError(f"data streams of process {index}: expected distinct indices in [0, {total}), got {ids}")
        if self.batch_size % len(ids):
            raise ValueError(f"data.batch_size ({self.batch_size} per process): expected a multiple of the "
                             f"{len(ids)} streams process {index} reads (data.num_streams={total})")
        return ids, total

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
        datasets = d["datasets"]
        if isinstance(datasets, (str, _AbcMapping)) or not hasattr(datasets, "__iter__"):
            raise ValueError(f"data.datasets: expected a list of dicts {{name, data_dir, mapping, ...}}, got "
                             f"{datasets!r}")
        d["datasets"] = tuple(dataset_spec(item, i) for i, item in enumerate(datasets))
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


_SPEC_FIELDS = {f.name for f in dataclasses.fields(DatasetSpec)}
# How a dataset is written on the command line (ml_collections parses a tuple field with ast.literal_eval).
DATASETS_FLAG_EXAMPLE = ("""--config.data.datasets='[{"name": "libero_10_no_noops", "data_dir": "/data/rlds", """
                         """"mapping": "libero"}]'""")


def dataset_spec(item, i: int) -> DatasetSpec:
    """`data.datasets[i]` (a DatasetSpec, dict or ConfigDict) → DatasetSpec; errors name data.datasets[i].field."""
    if isinstance(item, DatasetSpec):
        return item
    where = f"data.datasets[{i}]"
    if hasattr(item, "to_dict"):
        item = item.to_dict()
    if not isinstance(item, _AbcMapping):
        # A JSON null/true/false makes ast.literal_eval give up, and the whole text arrives as one string.
        hint = (" (write Python literals None/True/False, not JSON's null/true/false)"
                if isinstance(item, str) else "")
        raise ValueError(f"{where}: expected a dict {{name, data_dir, mapping, weight, split, norm_stats, "
                         f"delta_action_mask, format}}, got {item!r}{hint}; e.g. {DATASETS_FLAG_EXAMPLE}")
    item = dict(item)
    for key in item:
        if key not in _SPEC_FIELDS:
            raise ValueError(f"{where}.{key}: unknown field (expected one of {sorted(_SPEC_FIELDS)})")
    if not isinstance(item.get("name"), str) or not item["name"]:
        raise ValueError(f"{where}.name: expected a tfds dataset name, got {item.get('name')!r} (or a LeRobot repo id)")
    if item.get("format", "rlds") not in DATASET_FORMATS:
        raise ValueError(f"{where}.format: expected one of {DATASET_FORMATS}, got {item['format']!r}")
    for key in ("data_dir", "norm_stats"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise ValueError(f"{where}.{key}: expected a path (str) or None, got {item[key]!r}")
    if not isinstance(item.get("split", "train"), str):
        raise ValueError(f"{where}.split: expected a tfds split such as 'train', got {item['split']!r}")
    weight = item.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise ValueError(f"{where}.weight: expected a number > 0, got {weight!r}")
    mask = item.get("delta_action_mask")
    if mask is not None and (isinstance(mask, str) or not hasattr(mask, "__iter__")):
        raise ValueError(f"{where}.delta_action_mask: expected a list of True/False or None, got {mask!r}")
    try:
        return DatasetSpec(**item)
    except ValueError as e:  # the mapping: "mapping: unknown name ...", "mapping.state: ..."
        raise ValueError(f"{where}.{e}") from None


def _override_type(name: str) -> type:
    """The type a `--config.data.<name>=` override of a None default is parsed as."""
    hint = typing.get_type_hints(DataConfig)[name]
    inner = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(inner) or inner


def default_config():
    """A ConfigDict with every field, for experiment files (`config.data = default_config()`).

    Every field can be overridden from the command line: sequences are tuples (ml_collections cannot
    parse an override of a list) and a None default carries its type (it cannot parse a NoneType one)."""
    import ml_collections

    c = ml_collections.ConfigDict()
    c.datasets = (dict(name="libero_10_no_noops", data_dir="", mapping="libero", weight=1.0, split="train",
                       norm_stats=None, delta_action_mask=None),)
    for f in dataclasses.fields(DataConfig):
        if f.name == "datasets":
            continue
        if f.default is None:
            c[f.name] = ml_collections.FieldReference(None, field_type=_override_type(f.name))
        else:
            c[f.name] = f.default
    return c
