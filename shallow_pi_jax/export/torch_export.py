"""A policy directory (JAX, openpi layout) as a PyTorch export directory: `export_torch`'s work.

    export_torch("runs/l6/student", "export/pi05_l6", dtype="bfloat16")

Writes, all or nothing: DIR/model.safetensors (openpi's PyTorch state-dict names), DIR/config.json
(export_config.py), and DIR/assets/ and DIR/policy_record.json when the checkpoint has them. The
command's help (python -m shallow_pi_jax.export_torch --help) says where each size comes from.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

from safetensors.torch import save_file
from tqdm import tqdm

from shallow_pi_jax import fileio
from shallow_pi_jax.checkpoint import policy_dir, policy_record
from shallow_pi_jax.checkpoint.layer_reader import ParamsReader
from shallow_pi_jax.export.convert import convert_params
from shallow_pi_jax.export.export_config import FORMAT, make_export_config, read_export_config
from shallow_pi_jax.export.torch_model import TORCH_DTYPES, float32_constants, load_pretrained
from shallow_pi_jax.models.config import ModelConfig
from shallow_pi_jax.training.layer_map import LayerMap, make_layer_map, parse_layers


def _config_from_json(path: pathlib.Path):
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if d.get("format") == FORMAT:
        return read_export_config(path)[0]
    if "gemma_llm" in d:  # openpi fixture config.json
        return ModelConfig.from_fixture(path)
    if "llm" in d and "expert" in d:
        return ModelConfig.from_dict(d)
    raise ValueError(f"--config: {path} is neither a ModelConfig json, a fixture config.json nor an export config.json")


def _stored_depth(shapes: dict, default: int) -> int:
    return shapes.get("PaliGemma/llm/layers/mlp/linear", (default,))[0]


def resolve_config(pd: policy_dir.PolicyDir, config=None, action_horizon: int | None = None,
                   max_token_len: int | None = None) -> ModelConfig:
    """The model config: `config`'s json (--config), the directory's record, CKPT/config.json, or the shapes.

    A json's horizon and prompt length give way to the flags; the directory's own record must agree
    with them. Without any of these the shapes give every size and the horizon must come from
    --action-horizon.
    """
    overrides = {k: v for k, v in (("action_horizon", action_horizon), ("max_token_len", max_token_len))
                 if v is not None}
    base = None
    if config:
        path = pathlib.Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"--config: {path} does not exist")
        base = _config_from_json(path)
    elif pd.config is not None:
        cfg = pd.model_config(**overrides)
        depth = _stored_depth(pd.shapes, cfg.depth)
        if depth != cfg.depth:
            raise ValueError(f"depth: {pd.root / policy_dir.MODEL_CONFIG} says {cfg.depth} layers, "
                             f"{pd.params_dir} holds {depth}")
        return cfg
    elif (pd.root / "config.json").is_file():
        try:
            base = _config_from_json(pd.root / "config.json")
        except (ValueError, KeyError, TypeError):
            base = None  # CKPT/config.json of some other tool: ignore it
    if base is not None:
        # A json may describe the teacher of this student; the params decide the depth.
        return dataclasses.replace(base.with_depth(_stored_depth(pd.shapes, base.depth)), **overrides)
    return pd.model_config(**overrides)


def resolve_layer_map(pd: policy_dir.PolicyDir, depth: int, layers: str | None = None,
                      teacher_depth: int = 18) -> dict | None:
    """The student's layer map: `layers` (--layer-map, teacher layers of a `teacher_depth` teacher)
    or the directory's layer_map.json; None for a model that is no student."""
    if layers:
        source = "--layer-map"
        lm = make_layer_map(teacher_depth, layers=parse_layers(layers)).to_dict()
    elif pd.layer_map is not None:
        source = str(pd.root / policy_dir.LAYER_MAP)
        try:
            lm = {**pd.layer_map, **LayerMap.from_dict(pd.layer_map).to_dict()}
        except (KeyError, TypeError) as e:
            raise ValueError(f"{source}: expected teacher_depth and indices, got {pd.layer_map} ({e!r})") from None
    else:
        return None
    if len(lm["indices"]) != depth:
        raise ValueError(f"{source}: {len(lm['indices'])} indices {lm['indices']} "
                         f"but {pd.params_dir} has {depth} layers")
    return lm


def export_torch(path, out, *, dtype: str = "float32", config=None, action_horizon: int | None = None,
                 max_token_len: int | None = None, layers: str | None = None, teacher_depth: int = 18,
                 assets=None, overwrite: bool = False, load_back: bool = True,
                 verify: bool = True) -> pathlib.Path:
    """Convert the policy directory at `path` to PyTorch in `out`; returns `out`.

    `config`, `action_horizon`, `max_token_len`: resolve_config; `layers`, `teacher_depth`:
    resolve_layer_map; `assets`: the directory copied as assets/ (default: the checkpoint's);
    `load_back`: load the result into the PyTorch model (strict); `verify`: the checkpoint's checksums."""
    pd = policy_dir.read(path, verify=verify)
    out = pathlib.Path(out).expanduser().resolve()
    if out.exists() and not overwrite:
        raise ValueError(f"--out: {out} exists (pass --overwrite to replace it)")
    if out == pd.root or out in pd.root.parents or pd.params_dir in (out, *out.parents):
        raise ValueError(f"--out: {out} would replace or write into the checkpoint {pd.root}")
    reader = ParamsReader(pd.params_dir, verify=verify)
    shapes = pd.shapes
    cfg = resolve_config(pd, config, action_horizon, max_token_len)
    lmap = resolve_layer_map(pd, cfg.depth, layers, teacher_depth)
    asset_dir = pathlib.Path(assets) if assets else pd.root / policy_dir.ASSETS
    if assets and not asset_dir.is_dir():
        raise FileNotFoundError(f"--assets: {asset_dir} is not a directory")

    print(f"{'π0.5' if cfg.pi05 else 'π0'}: depth {cfg.depth}, llm width {cfg.llm.width}, expert width "
          f"{cfg.expert.width}, heads {cfg.llm.num_heads}/{cfg.llm.num_kv_heads}x{cfg.llm.head_dim}, "
          f"action {cfg.action_horizon}x{cfg.action_dim}, prompt {cfg.max_token_len}, layer map "
          f"{lmap['indices'] if lmap else None}")
    bar = tqdm(total=len(shapes), desc="convert", unit="leaf")
    tensors = convert_params(lambda p: reader.read(p), cfg, TORCH_DTYPES[dtype], shapes=shapes,
                             progress=lambda _: bar.update())
    bar.close()

    with fileio.atomic_dir(out, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        source = {"params": str(pd.params_dir), "dtype": dtype}
        constants = float32_constants(cfg.expert.width, cfg.llm.head_dim)
        fileio.write_json(tmp / "config.json", make_export_config(cfg, constants, dtype, lmap, source))
        if asset_dir.is_dir():
            shutil.copytree(asset_dir, tmp / "assets")
        if pd.record is not None:  # the deployed policy must be fed as the JAX one was
            policy_record.write(tmp, pd.record)
        if load_back:
            load_pretrained(tmp)  # strict: keys, shapes, tie
    n = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({n / 2**20:.1f} MiB): model.safetensors, config.json"
          + (", assets/" if (out / "assets").is_dir() else ""))
    return out
