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
import sys

from shallow_pi_jax import cli

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


def main(argv=None):
    args = parse_args(argv)
    # Imported once the flags are parsed, so that --help answers without loading JAX or PyTorch.
    from shallow_pi_jax.export.torch_export import export_torch

    return export_torch(cli.policy_path(args.params), args.out, dtype=args.dtype, config=args.config,
                        action_horizon=args.action_horizon, max_token_len=args.max_token_len, layers=args.layer_map,
                        teacher_depth=args.teacher_depth, assets=args.assets, overwrite=args.overwrite,
                        load_back=not args.no_verify, verify=not args.no_checksums)


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
