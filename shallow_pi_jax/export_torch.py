"""Convert a JAX (openpi-layout) π0 / π0.5 checkpoint, teacher or student, to PyTorch.

    python -m shallow_pi_jax.export_torch --params CKPT/params --out DIR    # or --checkpoint CKPT, or RUN
    python -m shallow_pi_jax.export_torch --params students/pi05_l6/params --out export/pi05_l6 --dtype bfloat16
    python -m shallow_pi_jax.export_torch --params CKPT/params --out DIR --action-horizon 10 --max-token-len 200

Writes, all or nothing (built in a hidden sibling directory, renamed at the end):
  DIR/model.safetensors   openpi's PyTorch state-dict names and shapes (loads into openpi's PI0Pytorch)
  DIR/config.json         every size, π0/π0.5, action dim/horizon, layer map (if the checkpoint has
                          one), precision, and the float32 constants of the JAX model
  DIR/assets/             the checkpoint's assets/ (norm_stats.json per asset id), when present
  DIR/policy_record.json  the checkpoint's: how the policy sees the world (cameras, prompt, actions)

--params (or --checkpoint) takes any policy directory: a training run's --workdir (its student/),
a student directory (trainer or make_student), an openpi checkpoint CKPT, or its params/.
Sizes are read from the parameter shapes. What shapes cannot tell comes from, in order:
`--config` (a ModelConfig json, an openpi fixture config.json, or an earlier export's config.json,
its horizon and prompt length overridable by the flags), the policy directory's own
`model_config.json` (what the trainer and make_student write; the flags must agree with it),
`CKPT/config.json`, the flags. The action horizon must be known from one of them. The conversion
is strict: a missing, extra or mis-shaped leaf is an error listing all of them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import shutil
import sys

from safetensors.torch import save_file
from tqdm import tqdm

from shallow_pi_jax import cli, fileio
from shallow_pi_jax.checkpoint import policy_dir, policy_record
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
)
from shallow_pi_jax.training.layer_map import LayerMap, make_layer_map, parse_layers

DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", "--checkpoint", dest="params", required=True,
                   help="policy directory: a training run, a student directory, openpi's CKPT, or its params/")
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
    p.add_argument("--no-checksums", action="store_true",
                   help="skip checking the checkpoint's files against its checksums.json (faster on huge checkpoints)")
    return cli.parse(p, argv)


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


def resolve_config(args, pd: policy_dir.PolicyDir) -> ModelConfig:
    """The model config: --config's json, the directory's record, CKPT/config.json, or the shapes.

    A json's horizon and prompt length give way to the flags; the directory's own record must agree
    with them. Without any of these the shapes give every size and the horizon must come from
    --action-horizon.
    """
    overrides = {k: v for k, v in (("action_horizon", args.action_horizon), ("max_token_len", args.max_token_len))
                 if v is not None}
    base = None
    if args.config:
        path = pathlib.Path(args.config)
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


def resolve_layer_map(args, pd: policy_dir.PolicyDir, depth: int):
    if args.layer_map:
        source = "--layer-map"
        lm = make_layer_map(args.teacher_depth, layers=parse_layers(args.layer_map)).to_dict()
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


def main(argv=None):
    args = parse_args(argv)
    pd = policy_dir.read(cli.policy_path(args.params), verify=not args.no_checksums)
    out = pathlib.Path(args.out).expanduser().resolve()
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out: {out} exists (pass --overwrite to replace it)")
    if out == pd.root or out in pd.root.parents or pd.params_dir in (out, *out.parents):
        raise ValueError(f"--out: {out} would replace or write into the checkpoint {pd.root}")
    reader = ParamsReader(pd.params_dir, verify=not args.no_checksums)
    shapes = pd.shapes
    cfg = resolve_config(args, pd)
    lmap = resolve_layer_map(args, pd, cfg.depth)
    assets = pathlib.Path(args.assets) if args.assets else pd.root / policy_dir.ASSETS
    if args.assets and not assets.is_dir():
        raise FileNotFoundError(f"--assets: {assets} is not a directory")

    print(f"{'π0.5' if cfg.pi05 else 'π0'}: depth {cfg.depth}, llm width {cfg.llm.width}, expert width "
          f"{cfg.expert.width}, heads {cfg.llm.num_heads}/{cfg.llm.num_kv_heads}x{cfg.llm.head_dim}, "
          f"action {cfg.action_horizon}x{cfg.action_dim}, prompt {cfg.max_token_len}, layer map "
          f"{lmap['indices'] if lmap else None}")
    bar = tqdm(total=len(shapes), desc="convert", unit="leaf")
    tensors = convert_params(lambda p: reader.read(p), cfg, TORCH_DTYPES[args.dtype], shapes=shapes,
                             progress=lambda _: bar.update())
    bar.close()

    with fileio.atomic_dir(out, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        source = {"params": str(pd.params_dir), "dtype": args.dtype}
        constants = float32_constants(cfg.expert.width, cfg.llm.head_dim)
        fileio.write_json(tmp / "config.json", make_export_config(cfg, constants, args.dtype, lmap, source))
        if assets.is_dir():
            shutil.copytree(assets, tmp / "assets")
        if pd.record is not None:  # the deployed policy must be fed as the JAX one was
            policy_record.write(tmp, pd.record)
        if not args.no_verify:
            load_pretrained(tmp)  # strict: keys, shapes, tie
    n = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({n / 2**20:.1f} MiB): model.safetensors, config.json"
          + (", assets/" if (out / "assets").is_dir() else ""))
    return out


if __name__ == "__main__":
    sys.exit(cli.run(main))
