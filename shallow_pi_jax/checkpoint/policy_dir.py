"""The policy directory: the one format every command reads, and its one writer (`write`), which the
trainer, export_checkpoint and make_student all call.

    DIR/params/              openpi's params layout (orbax item {"params": pure dict}; openpi_params.py)
    DIR/model_config.json    ModelConfig.to_dict(): every size and what the tree cannot tell (horizon,
                             prompt length, cameras). Ours; openpi's checkpoints have none.
    DIR/layer_map.json       students only: the layer map (teacher/student depth, teacher layer indices and
                             strategy of both stacks) and its Lineage (teacher, its sha256, ...), one schema
                             (LAYER_MAP_KEYS); older files are read into it (layer_map_record)
    DIR/assets/norm_stats.json             ours, or openpi's assets/<asset_id>/norm_stats.json
    DIR/policy_record.json   how the policy sees the world (policy_record.py): cameras, state in the prompt,
                             horizon, dims, delta mask, norm type. Ours; openpi's checkpoints have none.
    DIR/checksums.json       ours: sha256 and size of every file above, written last (checksums.py)

`read(path)` accepts DIR or DIR/params, for ours and openpi's alike. Where there is no
model_config.json the sizes come from the params' shapes, π0 vs π0.5 from the heads present, and
the horizon / prompt length from the caller (openpi's defaults otherwise).

Integrity: `read` checks the file set, the sizes and the small files against checksums.json (cheap);
`load_model` (and openpi_params.restore_params, layer_reader.ParamsReader) hash every file, and
check every loaded parameter is finite. `verify=False` skips the checksums (commands: --no-checksums);
openpi's checkpoints have no checksums.json, so for them only the finite check runs.
"""
from __future__ import annotations

import dataclasses
import functools
import pathlib
import shutil

import jax

from shallow_pi_jax import fileio
from shallow_pi_jax.checkpoint import checksums, openpi_params, policy_record
from shallow_pi_jax.models.config import (
    ModelConfig,
    default_max_token_len,
    is_pi05_tree,
)
from shallow_pi_jax.models.params import param_shapes
from shallow_pi_jax.models.pi0 import Pi0

PARAMS = "params"
MODEL_CONFIG = "model_config.json"
LAYER_MAP = "layer_map.json"
ASSETS = "assets"
NORM_STATS = "norm_stats.json"
CHECKSUMS = checksums.MANIFEST
RECORD = policy_record.FILE

# layer_map.json, every key always written (null where the writer does not know it): the map, as
# training.layer_map.LayerMap.to_dict writes it, then its Lineage, then the student's size.
MAP_KEYS = ("teacher_depth", "student_depth", "indices", "strategy", "expert_indices", "expert_strategy")


@dataclasses.dataclass(frozen=True)
class Lineage:
    """Where a student's layers came from: what layer_map.json says beside the map itself."""

    teacher: str | None = None  # the teacher's params directory
    # openpi_params.checkpoint_digest: sha256 over every file of the teacher's params/ in sorted
    # relative-path order, hashing 'path\0size\0' then the bytes. make_student's; the trainer does not hash.
    teacher_sha256: str | None = None
    teacher_params: int | None = None  # parameter count
    teacher_lora_pairs_merged: int | None = None  # LoRA pairs merged into the student's weights
    dtype: str | None = None  # of the student's params: "keep" (the teacher's), float32, bfloat16


LAYER_MAP_KEYS = (*MAP_KEYS, *(f.name for f in dataclasses.fields(Lineage)), "student_params")


def layer_map_record(d: dict) -> dict:
    """A layer_map.json's contents in today's schema (LAYER_MAP_KEYS, in that order).

    Older files are read as LayerMap.from_dict reads them: without a strategy, "explicit"; without
    a student depth, the number of indices; without expert_* (students before the expert had a map
    of its own) the expert takes the backbone's map. Without a lineage key, null; make_student's
    former description keys ("checksum", "applies_to", "created") are dropped. Anything else is
    kept, after the schema's keys, for the reader that checks the map (LayerMap.from_dict) to judge."""
    out = {k: d.get(k) for k in LAYER_MAP_KEYS}
    if isinstance(d.get("indices"), list):
        out["strategy"] = d.get("strategy", "explicit")
        out["student_depth"] = d.get("student_depth", len(d["indices"]))
        if out["expert_indices"] is None:
            out["expert_indices"] = d["indices"]
            out["expert_strategy"] = d.get("expert_strategy", out["strategy"])
    return {**out, **{k: v for k, v in d.items() if k not in out and k not in _DROPPED}}


_DROPPED = ("checksum", "applies_to", "created")  # make_student's before one schema: descriptions, a timestamp


@dataclasses.dataclass(frozen=True)
class PolicyDir:
    root: pathlib.Path
    params_dir: pathlib.Path
    config: ModelConfig | None  # from model_config.json; None for openpi's checkpoints
    layer_map: dict | None
    record: policy_record.PolicyRecord | None = None  # None for openpi's checkpoints

    @functools.cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """{'/'-joined path: shape} of the stored params, from metadata only (read once)."""
        flat = openpi_params.flatten_params(openpi_params.params_shapes(self.params_dir))
        return {k: tuple(v.shape) for k, v in flat.items()}

    def model_config(self, *, action_horizon: int | None = None, max_token_len: int | None = None,
                     default_horizon: int | None = None) -> ModelConfig:
        """The model this directory holds: its record, or sizes inferred from the params' shapes.

        `action_horizon` / `max_token_len` fill what an openpi checkpoint's tree cannot tell; against
        a recorded config they must agree (a trained model cannot change them)."""
        if self.config is not None:
            for name, value in (("action_horizon", action_horizon), ("max_token_len", max_token_len)):
                if value is not None and value != getattr(self.config, name):
                    raise ValueError(f"{name}: {self.root / MODEL_CONFIG} says {getattr(self.config, name)}, "
                                     f"got {value}; a trained model cannot change it")
            return self.config
        shapes = self.shapes
        pi05 = is_pi05_tree(shapes)
        horizon = action_horizon or default_horizon
        if horizon is None:
            raise ValueError(f"action_horizon: {self.root} has no {MODEL_CONFIG} and the params do not determine "
                             "the horizon; pass it (e.g. --action-horizon 10)")
        return ModelConfig.from_param_shapes(shapes, action_horizon=horizon,
                                             max_token_len=max_token_len or default_max_token_len(pi05))

    def norm_stats(self, asset_id: str | None = None) -> pathlib.Path | None:
        """assets/norm_stats.json (ours) or assets/<asset_id>/norm_stats.json (openpi); None if absent."""
        assets = self.root / ASSETS
        if (assets / NORM_STATS).is_file():
            return assets / NORM_STATS
        if asset_id and (assets / asset_id / NORM_STATS).is_file():
            return assets / asset_id / NORM_STATS
        found = sorted(assets.rglob(NORM_STATS)) if assets.is_dir() else []
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(f"{assets}: several {NORM_STATS} ({[str(f.relative_to(assets)) for f in found]}); "
                             "choose one with --norm-stats")
        return None


def read(path, *, verify: bool = True) -> PolicyDir:
    """DIR or DIR/params of a policy directory (ours or openpi's); reads metadata only.

    With `verify` and a checksums.json, the cheap check runs first: every listed file present with
    its size, no unlisted file under params/, the contents of all but the tensor data files
    (load_model hashes those)."""
    params_dir = openpi_params.resolve_params_dir(path)
    root = params_dir.parent if params_dir.name == PARAMS else params_dir
    if verify and params_dir.name == PARAMS:
        checksums.verify(root, hash_params=False)
    cfg_file, lm_file = root / MODEL_CONFIG, root / LAYER_MAP
    config = ModelConfig.from_dict(fileio.read_json(cfg_file)) if cfg_file.is_file() else None
    layer_map = layer_map_record(fileio.read_json(lm_file)) if lm_file.is_file() else None
    return PolicyDir(root, params_dir, config, layer_map, policy_record.read(root))


def write(out_dir, params, model_config: ModelConfig | None, *, layer_map: dict | None = None,
          lineage: Lineage | None = None, norm_stats: str | pathlib.Path | None = None,
          assets: str | pathlib.Path | None = None, check_finite: bool = True, compress: bool = False,
          record: policy_record.PolicyRecord | None = None) -> pathlib.Path:
    """Write params (openpi layout), model_config.json, layer_map.json, policy_record.json,
    assets/ and, last, checksums.json over all of them.

    `model_config` None: none is written (a student of an openpi checkpoint, whose sizes the shapes
    tell). `layer_map` (LayerMap.to_dict()) and `lineage` make layer_map.json. `norm_stats` (a
    file, or a directory holding norm_stats.json) becomes assets/norm_stats.json; `assets`, a whole
    assets directory (openpi's assets/<asset_id>/ layout kept), is copied instead.
    `check_finite`: refuse (ValueError naming the leaves) to write params holding NaN or inf.
    `compress`: zstd chunks, as openpi's own saves (openpi_params.save_params).
    Multi-host: every process takes part in the params save; process 0 writes the small files."""
    out_dir = pathlib.Path(out_dir)
    if norm_stats and assets:
        raise ValueError("norm_stats and assets: pass one of the two")
    if check_finite:
        openpi_params.assert_finite(params, f"params to write to {out_dir}")
    if record is not None and model_config is not None:
        policy_record.check_model(record, f"the policy record to write to {out_dir}", model_config,
                                  "the model config says")
    out_dir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        # The old manifest would describe the old files while the new ones are written.
        (out_dir / CHECKSUMS).unlink(missing_ok=True)
        (out_dir / RECORD).unlink(missing_ok=True)  # a stale record would describe another policy
    # On several processes the arrays stay global: no process can fetch a sharded leaf whole (a multi-host
    # slice), and orbax has every process write the shards it holds.
    host = params if jax.process_count() > 1 else jax.device_get(params)
    openpi_params.save_params(host, out_dir / PARAMS, overwrite=True, compress=compress)
    if jax.process_index() != 0:
        return out_dir
    if model_config is not None:
        fileio.write_json(out_dir / MODEL_CONFIG, model_config.to_dict())
    if layer_map is not None:
        size = sum(int(x.size) for x in jax.tree.leaves(params))
        lm = {**layer_map, **(dataclasses.asdict(lineage) if lineage else {}), "student_params": size}
        fileio.write_json(out_dir / LAYER_MAP, layer_map_record(lm))
    if record is not None:
        policy_record.write(out_dir, record)
    if assets:
        shutil.copytree(assets, out_dir / ASSETS, dirs_exist_ok=True)
    if norm_stats:
        src = pathlib.Path(norm_stats)
        src = src / NORM_STATS if src.is_dir() else src
        (out_dir / ASSETS).mkdir(exist_ok=True)
        fileio.write_bytes(out_dir / ASSETS / NORM_STATS, src.read_bytes())
    checksums.write_manifest(out_dir)
    return out_dir


def write_checksums(root) -> pathlib.Path:
    """Re-seal a policy directory whose files were changed by hand: DIR/checksums.json."""
    return checksums.write_manifest(pathlib.Path(root))


def move(src, dst) -> pathlib.Path:
    """Move a complete policy directory's files into `dst`; params/ last, so its presence means complete.

    Its checksums.json moves too (before params/); a directory without one gets one once moved."""
    src, dst = pathlib.Path(src), pathlib.Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    sealed = (src / CHECKSUMS).is_file()
    for name in (ASSETS, MODEL_CONFIG, LAYER_MAP, RECORD, CHECKSUMS, PARAMS):
        if (src / name).exists():
            (src / name).rename(dst / name)
    if not sealed and (dst / PARAMS).is_dir():
        checksums.write_manifest(dst)
    return dst


def load_model(params_dir, *, config: ModelConfig | None = None, dtype=None, sharding=None, verify: bool = True,
               check_finite: bool = True, **overrides):
    """Restore an openpi params directory and the Pi0 that runs it.

    `config` (e.g. from an experiment file) wins; otherwise sizes are inferred from the tree.
    Raises one ValueError listing missing / unexpected / mis-shaped leaves when the checkpoint is
    of another architecture than the config. `verify`: hash every file against the directory's
    checksums.json first, when it has one (openpi's checkpoints do not). `check_finite`: a NaN or
    inf parameter is a ValueError naming the directory and the leaf.
    """
    if verify:
        checksums.verify_params_dir(openpi_params.resolve_params_dir(params_dir))
    stored = openpi_params.flatten_params(openpi_params.params_shapes(params_dir))
    if config is None:
        config = ModelConfig.from_param_shapes({k: v.shape for k, v in stored.items()}, **overrides)
    expected = param_shapes(config)
    openpi_params.validate_params(openpi_params.unflatten_params(stored), expected)
    params = openpi_params.restore_params(params_dir, dtype=dtype, sharding=sharding, verify=False,
                                          check_finite=check_finite)
    return Pi0(config), params
