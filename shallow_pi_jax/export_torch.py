"""Convert a JAX (openpi-layout) π0 / π0.5 checkpoint, teacher or student, to PyTorch.

    python -m shallow_pi_jax.export_torch --params CKPT/params --out DIR
    python -m shallow_pi_jax.export_torch --params students/pi05_l6/params --out export/pi05_l6 --dtype bfloat16
    python -m shallow_pi_jax.export_torch --params CKPT/params --out DIR --action-horizon 10 --max-token-len 200

Writes, all or nothing (built in a hidden sibling directory, renamed at the end):
  DIR/model.safetensors   openpi's PyTorch state-dict names and shapes (loads into openpi's PI0Pytorch)
  DIR/config.json         every size, π0/π0.5, action dim/horizon, layer map (if the checkpoint has
                          one), precision, and the float32 constants of the JAX model
  DIR/assets/             the checkpoint's assets/ (norm_stats.json per asset id), when present

Sizes are read from the parameter shapes. What shapes cannot tell comes from, in order: the flags,
`--config` (a ModelConfig json, an openpi fixture config.json, or an earlier export's config.json),
the policy directory's own `model_config.json` (what the trainer and make_student write), `CKPT/config.json`. \
The action horizon must be known from one of them. The conversion is strict:
a missing, extra or mis-shaped leaf is an error listing all of them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import uuid

from safetensors.torch import save_file
from tqdm import tqdm

from shallow_pi_jax.checkpoint import openpi_params, policy_dir
from shallow_pi_jax.checkpoint.layer_reader import ParamsReader
from shallow_pi_jax.export.convert import convert_params
from shallow_pi_jax.export.export_config import (
    FORMAT,
    make_export_config,
    read_export_config,
)
from shallow_pi_jax.export.torch_model import (
    TORCH_DTYPES,
    float32_constants,
    load_pretrained,
)
from shallow_pi_jax.models.config import (
    ModelConfig,
    default_max_token_len,
    is_pi05_tree,
)
from shallow_pi_jax.training.layer_map import LayerMap, make_layer_map, parse_layers

DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", required=True, help="orbax params directory (CKPT/params) in openpi's layout")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the written tensors (default float32)")
    p.add_argument("--config", help="json with the model config (ModelConfig.to_dict, fixture or export config.json)")
    p.add_argument("--action-horizon", type=int, help="actions per chunk (openpi: 50 for π0 base, 10 for LIBERO)")
    p.add_argument("--max-token-len", type=int, help="prompt tokens (openpi default: 48 for π0, 200 for π0.5)")
    p.add_argument("--layer-map",
                   help="teacher layers of a student, e.g. 0,3,7,10,14,17 (default: CKPT/layer_map.json)")
    p.add_argument("--teacher-depth", type=int, default=18, help="teacher depth for --layer-map (default 18)")
    p.add_argument("--assets", help="assets directory to copy (default: CKPT/assets when it exists)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-verify", action="store_true", help="skip loading the result back into the PyTorch model")
    return p.parse_args(argv)


def _config_from_json(path: pathlib.Path):
    d = json.loads(path.read_text())
    if d.get("format") == FORMAT:
        return read_export_config(path)[0]
    if "gemma_llm" in d:  # openpi fixture config.json
        return ModelConfig.from_fixture(path)
    if "llm" in d and "expert" in d:
        return ModelConfig.from_dict(d)
    raise ValueError(f"--config: {path} is neither a ModelConfig json, a fixture config.json nor an export config.json")


def resolve_config(args, shapes: dict, ckpt_root: pathlib.Path):
    """The model config: a json's (checked against the shapes later) or inferred from the shapes.

    Horizon and prompt length from the flags win over the json; without a json the shapes give
    every size and the horizon must come from --action-horizon.
    """
    base = None
    json_path = pathlib.Path(args.config) if args.config else ckpt_root / "config.json"
    if not args.config and (ckpt_root / policy_dir.MODEL_CONFIG).is_file():
        base = policy_dir.read(ckpt_root).config
    elif json_path.is_file():
        try:
            base = _config_from_json(json_path)
        except (ValueError, KeyError, TypeError):
            if args.config:
                raise
            base = None  # CKPT/config.json of some other tool: ignore it
    overrides = {}
    if args.action_horizon is not None:
        overrides["action_horizon"] = args.action_horizon
    if args.max_token_len is not None:
        overrides["max_token_len"] = args.max_token_len
    if base is not None:
        # A student's json may still describe its teacher's depth; the params decide the depth.
        depth = shapes.get("PaliGemma/llm/layers/mlp/linear", (base.depth,))[0]
        return dataclasses.replace(base.with_depth(depth), **overrides)
    if "action_horizon" not in overrides:
        raise ValueError("action horizon unknown: the params do not determine it; pass --action-horizon N "
                         "(or --config with a model config)")
    overrides.setdefault("max_token_len", default_max_token_len(is_pi05_tree(shapes)))
    return ModelConfig.from_param_shapes(shapes, **overrides)


def resolve_layer_map(args, ckpt_root: pathlib.Path, depth: int):
    if args.layer_map:
        lm = make_layer_map(args.teacher_depth, layers=parse_layers(args.layer_map)).to_dict()
    elif (ckpt_root / "layer_map.json").is_file():
        d = json.loads((ckpt_root / "layer_map.json").read_text())
        lm = {**d, **LayerMap.from_dict(d).to_dict()}
    else:
        return None
    if len(lm["indices"]) != depth:
        raise ValueError(f"layer map: {len(lm['indices'])} indices {lm['indices']} "
                         f"but the checkpoint has {depth} layers")
    return lm


def main(argv=None):
    args = parse_args(argv)
    params_dir = openpi_params.resolve_params_dir(args.params)
    ckpt_root = params_dir.parent
    out = pathlib.Path(args.out).expanduser().resolve()
    if out.exists() and not args.overwrite:
        raise SystemExit(f"--out {out} exists; pass --overwrite to replace it")
    reader = ParamsReader(params_dir)
    shapes = {p: tuple(s.shape) for p, s in reader.shapes.items()}
    cfg = resolve_config(args, shapes, ckpt_root)
    lmap = resolve_layer_map(args, ckpt_root, cfg.depth)
    assets = pathlib.Path(args.assets) if args.assets else ckpt_root / "assets"
    if args.assets and not assets.is_dir():
        raise ValueError(f"--assets: {assets} is not a directory")

    print(f"{'π0.5' if cfg.pi05 else 'π0'}: depth {cfg.depth}, llm width {cfg.llm.width}, expert width "
          f"{cfg.expert.width}, heads {cfg.llm.num_heads}/{cfg.llm.num_kv_heads}x{cfg.llm.head_dim}, "
          f"action {cfg.action_horizon}x{cfg.action_dim}, prompt {cfg.max_token_len}, layer map "
          f"{lmap['indices'] if lmap else None}")
    bar = tqdm(total=len(shapes), desc="convert", unit="leaf")
    tensors = convert_params(lambda p: reader.read(p), cfg, TORCH_DTYPES[args.dtype], shapes=shapes,
                             progress=lambda _: bar.update())
    bar.close()

    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        source = {"params": str(params_dir), "dtype": args.dtype}
        constants = float32_constants(cfg.expert.width, cfg.llm.head_dim)
        conf = make_export_config(cfg, constants, args.dtype, lmap, source)
        (tmp / "config.json").write_text(json.dumps(conf, indent=1) + "\n")
        if assets.is_dir():
            shutil.copytree(assets, tmp / "assets")
        if not args.no_verify:
            load_pretrained(tmp)  # strict: keys, shapes, tie
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({n / 2**20:.1f} MiB): model.safetensors, config.json"
          + (", assets/" if (out / "assets").is_dir() else ""))
    return out


if __name__ == "__main__":
    main()
