r"""Serve a student or teacher checkpoint over openpi's websocket protocol.

    python -m shallow_pi_jax.serve --checkpoint runs/l6/student --env libero \
        --tokenizer /ckpt/paligemma_tokenizer.model --port 8000
    python -m shallow_pi_jax.serve --checkpoint /tmp/l6_demo/student --env demo      # the bundled demo

Any openpi client then works unchanged:

    from openpi_client.websocket_client_policy import WebsocketClientPolicy
    client = WebsocketClientPolicy("localhost", 8000)
    actions = client.infer({"observation/image": img, "observation/wrist_image": wrist,
                            "observation/state": state, "prompt": "open the drawer"})["actions"]

`curl localhost:8000/healthz` answers OK. See docs/serve.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

from shallow_pi_jax.serve.policy import load_policy, warmup_observation
from shallow_pi_jax.serve.presets import PRESETS
from shallow_pi_jax.serve.server import PolicyServer


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
    p.add_argument("--default-prompt", default=None, help="prompt used when a request has none")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype (default: the checkpoint's model config)")
    p.add_argument("--no-skip-masked-cameras", action="store_true",
                   help="run the vision tower for cameras whose mask is false too (openpi's behaviour)")
    p.add_argument("--no-warmup", action="store_true", help="do not compile before accepting clients")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        policy = load_policy(args.checkpoint, env=args.env, tokenizer_path=args.tokenizer,
                             norm_stats_path=args.norm_stats, num_steps=args.num_steps, noise_seed=args.noise_seed,
                             action_horizon=args.action_horizon, max_token_len=args.max_token_len,
                             default_prompt=args.default_prompt, dtype=args.dtype,
                             skip_masked_cameras=not args.no_skip_masked_cameras)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.no_warmup:
        start = time.monotonic()
        policy.sample(warmup_observation(policy))
        logging.info("compiled in %.1f s", time.monotonic() - start)
    server = PolicyServer(policy.infer, policy.metadata, host=args.host, port=args.port)
    logging.info("serving %s (%s, depth %d) on ws://%s:%d", args.checkpoint, args.env, policy.config.depth,
                 args.host, args.port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
