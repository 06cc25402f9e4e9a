r"""Serve a student or teacher checkpoint over openpi's websocket protocol.

    python -m shallow_pi_jax.serve --checkpoint runs/l6/student --env libero \
        --tokenizer /ckpt/paligemma_tokenizer.model --port 8000
    python -m shallow_pi_jax.serve --checkpoint /tmp/l6_demo/student --env demo      # the bundled demo

Any openpi client then works unchanged:

    from openpi_client.websocket_client_policy import WebsocketClientPolicy
    client = WebsocketClientPolicy("localhost", 8000)
    actions = client.infer({"observation/image": img, "observation/wrist_image": wrist,
                            "observation/state": state, "prompt": "open the drawer"})["actions"]

`curl localhost:8000/healthz` answers OK. Requests are checked before they reach the model (dtypes,
shapes, finite values, the preset's keys) and a refused one gets an error naming the field; frames
over --max-frame-mb close the connection (code 1009). See docs/serve.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from shallow_pi_jax import cli
from shallow_pi_jax.checkpoint import policy_record
from shallow_pi_jax.serve.presets import PRESETS
from shallow_pi_jax.serve.server import DEFAULT_MAX_FRAME_BYTES, PolicyServer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shallow_pi_jax.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint directory (params/ [+ model_config.json, layer_map.json, assets/]) or its params/")
    p.add_argument("--env", default="libero", choices=sorted(PRESETS),
                   help="robot preset: which observation keys the client sends (default: libero)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--host", default="0.0.0.0", help="interface to bind (default: 0.0.0.0)")
    p.add_argument("--tokenizer", default=None,
                   help="PaliGemma sentencepiece model (required except for --env demo)")
    p.add_argument("--norm-stats", default=None,
                   help="norm_stats.json (default: the one under the checkpoint's assets/)")
    p.add_argument("--num-steps", type=int, default=10, help="flow integration steps (default: 10)")
    p.add_argument("--noise-seed", type=int, default=None,
                   help="use the same noise for every request (reproducible actions); default: fresh noise")
    p.add_argument("--action-horizon", type=int, default=None,
                   help="chunk length of an openpi checkpoint without model_config.json (default: preset's)")
    p.add_argument("--max-token-len", type=int, default=None,
                   help="prompt length of an openpi checkpoint without model_config.json (default: 200 pi0.5, 48 pi0)")
    p.add_argument("--openpi-config", default=None, choices=sorted(policy_record.OPENPI),
                   help="the openpi config an openpi checkpoint (no policy_record.json) was trained with; default: "
                        "the --env preset's for its architecture (libero: pi05_libero / pi0_libero). Against a "
                        "checkpoint's own record a difference is an error")
    p.add_argument("--default-prompt", default=None, help="prompt used when a request has none")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype (default: the checkpoint's model config)")
    p.add_argument("--no-skip-masked-cameras", action="store_true",
                   help="run the vision tower for cameras whose mask is false too (openpi's behaviour)")
    p.add_argument("--no-warmup", action="store_true", help="do not compile before accepting clients")
    p.add_argument("--no-checksums", action="store_true",
                   help="skip checking the checkpoint's files against its checksums.json (faster start; "
                        "NaN/inf params and norm stats are refused either way)")
    p.add_argument("--max-frame-mb", type=float, default=DEFAULT_MAX_FRAME_BYTES / 2**20,
                   help="largest request frame in MiB; a longer one closes its connection with code 1009 "
                        f"(default: {DEFAULT_MAX_FRAME_BYTES / 2**20:g}, three 640x480 float32 cameras fit)")
    return p


def main(argv=None) -> int:
    args = cli.parse(build_parser(), argv)
    if not args.max_frame_mb > 0:
        raise cli.UsageError(f"--max-frame-mb: expected > 0, got {args.max_frame_mb}")
    # force: an imported library has already configured the root logger (WARNING, bare format), which
    # would hide "serving ... on ws://..." and the per-request refusals' timestamps.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    # websockets logs two INFO lines per health check; ours already log each client.
    logging.getLogger("websockets").setLevel(logging.INFO if args.verbose else logging.WARNING)

    # Imported once the flags are parsed, so that --help answers without loading JAX.
    from shallow_pi_jax.serve.policy import load_policy, warmup_observation

    # Any error here (a missing file, NaN or wrong-size norm stats, bad params) stops before serving.
    policy = load_policy(cli.policy_path(args.checkpoint), env=args.env, tokenizer_path=args.tokenizer,
                         norm_stats_path=args.norm_stats, num_steps=args.num_steps, noise_seed=args.noise_seed,
                         action_horizon=args.action_horizon, max_token_len=args.max_token_len,
                         default_prompt=args.default_prompt, dtype=args.dtype, openpi_config=args.openpi_config,
                         skip_masked_cameras=not args.no_skip_masked_cameras, verify=not args.no_checksums)
    if not args.no_warmup:
        start = time.monotonic()
        policy.sample(warmup_observation(policy))
        logging.info("compiled in %.1f s", time.monotonic() - start)
    server = PolicyServer(policy.infer, policy.metadata, host=args.host, port=args.port,
                          max_frame_bytes=int(args.max_frame_mb * 2**20))
    logging.info("serving %s (%s, depth %d)", args.checkpoint, args.env, policy.config.depth)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
