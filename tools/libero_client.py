r"""LIBERO closed-loop evaluation against a running policy server (like openpi's examples/libero).

    # terminal 1: the policy
    python -m shallow_pi_jax.serve --checkpoint runs/l6/student --env libero --tokenizer paligemma_tokenizer.model
    # terminal 2: the simulator (needs LIBERO + robosuite + MuJoCo and LIBERO's assets; see docs/serve.md)
    python tools/libero_client.py --host localhost --port 8000 --suite libero_spatial --trials 50 --out libero.json

    # no LIBERO? the same loop on the bundled ReachEnv simulator (tests the server end to end):
    python tools/libero_client.py --suite demo --trials 20

Per episode: reset to one of the suite's fixed initial states, wait `--num-wait` steps for objects
to settle, then every `--replan-steps` steps send {observation/image, observation/wrist_image
(both 180°-rotated and resized with padding to 224, as openpi's client), observation/state
(eef pos + axis-angle + gripper qpos, 8 dims), prompt} and execute the first actions of the chunk.
Success = the environment reports done. Prints and writes the success rate per task and overall.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
DUMMY_ACTION = [0.0] * 6 + [-1.0]


def quat_to_axis_angle(quat) -> np.ndarray:
    """(x, y, z, w) quaternion → axis·angle (robosuite's convention, as openpi's client uses)."""
    q = np.asarray(quat, np.float64).copy()
    q[3] = np.clip(q[3], -1.0, 1.0)
    den = math.sqrt(1.0 - q[3] * q[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(q[3]) / den


def libero_request(obs: dict, prompt: str, resize: int = 224) -> dict:
    from openpi_client import image_tools

    # LIBERO renders upside down; openpi's training data was flipped, so flip here too.
    img = np.ascontiguousarray(obs["agentview_image"][::-1, ::-1])
    wrist = np.ascontiguousarray(obs["robot0_eye_in_hand_image"][::-1, ::-1])
    return {
        "observation/image": image_tools.convert_to_uint8(image_tools.resize_with_pad(img, resize, resize)),
        "observation/wrist_image": image_tools.convert_to_uint8(image_tools.resize_with_pad(wrist, resize, resize)),
        "observation/state": np.concatenate([obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"]),
                                             obs["robot0_gripper_qpos"]]).astype(np.float32),
        "prompt": str(prompt),
    }


def run_libero(client, args) -> dict:
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as e:
        raise SystemExit(
            f"error: LIBERO is not installed ({e}). Install LIBERO (github.com/Lifelong-Robot-Learning/LIBERO), "
            "robosuite and MuJoCo, and download its assets; or run --suite demo.") from None
    suite = benchmark.get_benchmark_dict()[args.suite]()
    results = {}
    max_steps = args.max_steps or MAX_STEPS[args.suite]
    for task_id in range(suite.n_tasks):
        task = suite.get_task(task_id)
        init_states = suite.get_task_init_states(task_id)
        bddl = pathlib.Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=256, camera_widths=256)
        env.seed(args.seed)
        wins = 0
        for trial in range(args.trials):
            env.reset()
            obs = env.set_init_state(init_states[trial % len(init_states)])
            plan = collections.deque()
            done = False
            for t in range(max_steps + args.num_wait):
                if t < args.num_wait:
                    obs, _, done, _ = env.step(DUMMY_ACTION)
                    continue
                if not plan:
                    chunk = client.infer(libero_request(obs, task.language))["actions"]
                    plan.extend(chunk[: args.replan_steps])
                obs, _, done, _ = env.step(np.asarray(plan.popleft()).tolist())
                if done:
                    break
            wins += bool(done)
        env.close()
        results[task.language] = {"successes": wins, "trials": args.trials}
        print(f"task {task_id}: {wins}/{args.trials}  {task.language}", flush=True)
    return results


def run_demo(client, args) -> dict:
    """The same loop on ReachEnv (the server must run with --env demo)."""
    from shallow_pi_jax.sim.env import ReachEnv, rollout

    env = ReachEnv(seed=args.seed)

    def policy(obs):
        return np.asarray(client.infer({"observation/image": obs["image"],
                                        "observation/wrist_image": obs["wrist_image"],
                                        "observation/state": obs["state"], "prompt": obs["instruction"]})["actions"])

    wins = 0
    for trial in range(args.trials):
        wins += rollout(env, policy, seed=10_000 + trial, replan_every=args.replan_steps)["success"]
    return {"reach": {"successes": int(wins), "trials": args.trials}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--suite", default="libero_spatial", choices=[*MAX_STEPS, "demo"])
    p.add_argument("--trials", type=int, default=50, help="episodes per task (default 50, as openpi)")
    p.add_argument("--replan-steps", type=int, default=5, help="actions executed per chunk (default 5)")
    p.add_argument("--num-wait", type=int, default=10, help="settling steps before the policy acts")
    p.add_argument("--max-steps", type=int, default=None, help="episode length (default: per suite, as openpi)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=pathlib.Path, default=None, help="write per-task results as JSON")
    args = p.parse_args(argv)
    if args.trials < 1 or args.replan_steps < 1:
        print("error: --trials and --replan-steps must be >= 1", file=sys.stderr)
        return 2
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    client = WebsocketClientPolicy(args.host, args.port)
    print(f"server metadata: {client.get_server_metadata()}")
    start = time.monotonic()
    results = run_demo(client, args) if args.suite == "demo" else run_libero(client, args)
    wins = sum(r["successes"] for r in results.values())
    total = sum(r["trials"] for r in results.values())
    summary = {"suite": args.suite, "success_rate": wins / total, "successes": wins, "trials": total,
               "tasks": results, "replan_steps": args.replan_steps, "seconds": time.monotonic() - start}
    print(f"{args.suite}: success rate {100 * wins / total:.1f} % ({wins}/{total})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.out.parent, prefix=f".{args.out.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
