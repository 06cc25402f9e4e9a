r"""LIBERO closed-loop evaluation against a running policy server, as openpi's examples/libero/main.py.

    # terminal 1: the policy (the project's venv)
    python -m shallow_pi_jax.serve --checkpoint runs/l6/student --env libero --tokenizer paligemma_tokenizer.model
    # terminal 2: the simulator, in its own venv (LIBERO pins numpy < 2): tools/libero_setup.sh makes it
    source "$(tools/libero_setup.sh | tail -n 1)/bin/activate"
    python tools/libero_client.py --suite libero_spatial --port 8000 --out-dir runs/libero_spatial

    # no LIBERO? the same loop on the bundled ReachEnv simulator (server: --env demo; the project's venv):
    python tools/libero_client.py --suite demo --trials 20

Per task: one env (256x256 cameras, env.seed(--seed)); per episode: reset, the task's fixed initial
state number `episode`, `--num-wait` no-op steps (gripper -1) while objects settle, then every
`--replan-steps` actions a request {observation/image, observation/wrist_image (both flipped
[::-1, ::-1] and resized with padding to 224 by openpi_client.image_tools), observation/state
(eef pos + axis-angle of eef quat + gripper qpos, 8 values), prompt}, for at most the suite's step
budget. Success = the env reports done. Everything is openpi's; the differences: each episode keeps
its own video, a policy error stops the run (openpi logs it and counts a failure), an env error is
counted a failure and recorded in the episode's file.

--out-dir holds run.json (settings and server metadata), episodes/taskTT_epEEE.json (one per
finished episode: a rerun skips them, so an interrupted run resumes), videos/ and results.json /
results.md (success per task; rewritten after every episode). Errors are one `error: ...` line;
--verbose or SHALLOW_PI_VERBOSE=1 adds the traceback. Set-up, checks and cost: docs/libero.md.

LIBERO, robosuite and MuJoCo are imported inside functions: this file also runs in the project's
venv (the demo suite, the docs' argument checks), where they are absent, and the client must name
a wrong numpy before importing anything compiled against it.
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
import traceback
import warnings

import numpy as np

MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
DUMMY_ACTION = [0.0] * 6 + [-1.0]
ENV_RESOLUTION = 256  # what openpi's LIBERO training data was rendered at
ACTION_DIM = 7
SETUP_HINT = ("create the client's venv with tools/libero_setup.sh and run this script with its python: "
              "$(tools/libero_setup.sh | tail -n 1)/bin/python tools/libero_client.py ...")
RENDER_HINT = ("install EGL (Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1; "
               "MUJOCO_GL=egl) or OSMesa (apt-get install libosmesa6; MUJOCO_GL=osmesa)")
# Settings that make two runs' episodes comparable: a resumed run must match them all.
RUN_KEYS = ("suite", "seed", "max_steps", "num_wait", "replan_steps", "resize")


class ClientError(Exception):
    """A problem the user fixes (environment, server, arguments): one line, no traceback."""


# ----------------------------------------------------------------------------- openpi's preprocessing

def quat_to_axis_angle(quat) -> np.ndarray:
    """(x, y, z, w) quaternion → axis·angle (robosuite's quat2axisangle, which openpi's client uses)."""
    q = np.array(quat, np.float64)  # a copy: openpi clips the env's own array in place, we don't
    q[3] = np.clip(q[3], -1.0, 1.0)
    den = np.sqrt(1.0 - q[3] * q[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(q[3]) / den


def preprocess_image(image, size: int) -> np.ndarray:
    from openpi_client import image_tools

    # LIBERO renders upside down (OpenGL); openpi's training data was rotated 180°, so rotate here too.
    rotated = np.ascontiguousarray(np.asarray(image)[::-1, ::-1])
    return image_tools.convert_to_uint8(image_tools.resize_with_pad(rotated, size, size))


def libero_request(obs: dict, prompt: str, image: np.ndarray, resize: int = 224) -> dict:
    """openpi's request; `image` is preprocess_image(obs["agentview_image"]), made once a step for the video."""
    # The state stays float64, as openpi sends it (the server casts).
    return {
        "observation/image": image,
        "observation/wrist_image": preprocess_image(obs["robot0_eye_in_hand_image"], resize),
        "observation/state": np.concatenate([obs["robot0_eef_pos"], quat_to_axis_angle(obs["robot0_eef_quat"]),
                                             obs["robot0_gripper_qpos"]]),
        "prompt": str(prompt),
    }


# ----------------------------------------------------------------------------- environment checks

def check_numpy() -> None:
    major = int(np.__version__.split(".")[0])
    if major >= 2:
        raise ClientError(f"numpy {np.__version__} at {os.path.dirname(np.__file__)}: LIBERO (robosuite 1.4, "
                          f"MuJoCo 2.3.7) needs numpy < 2 (1.26.4); {SETUP_HINT}")


def import_libero():
    """(benchmark, get_libero_path, OffScreenRenderEnv), or a ClientError saying how to get them."""
    check_numpy()
    try:
        import openpi_client.websocket_client_policy  # noqa: F401
        from libero.libero import benchmark, get_libero_path
    except ImportError as e:
        raise ClientError(f"LIBERO or openpi-client is not importable by {sys.executable} ({e}); {SETUP_HINT}") \
            from None
    check_renderer()
    from libero.libero.envs import OffScreenRenderEnv
    return benchmark, get_libero_path, OffScreenRenderEnv


def check_renderer() -> None:
    """Open robosuite's own offscreen GL context and a MuJoCo render context in it, as env creation will."""
    # robosuite would pick EGL itself; set it so the message below names what was tried.
    os.environ.setdefault("MUJOCO_GL", "egl")
    backend = os.environ["MUJOCO_GL"]
    try:
        import mujoco
        from robosuite.utils import binding_utils

        ctx = binding_utils.GLContext(max_width=8, max_height=8)
        try:
            ctx.make_current()
            model = mujoco.MjModel.from_xml_string("<mujoco><worldbody/></mujoco>")
            mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150).free()
        finally:
            ctx.free()
    except Exception as e:  # noqa: BLE001 - EGL, OSMesa and PyOpenGL fail with any of a dozen types
        detail = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        raise ClientError(f"MuJoCo cannot render offscreen (MUJOCO_GL={backend}; {detail}); {RENDER_HINT}") \
            from None


def connect(host: str, port: int, timeout: float):
    """openpi's client, once a server answers; openpi's own constructor would wait forever."""
    import websockets.sync.client
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    deadline = time.monotonic() + timeout
    while True:
        try:
            with websockets.sync.client.connect(f"ws://{host}:{port}", open_timeout=5, max_size=None):
                break
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as e:
            if time.monotonic() > deadline:
                raise ClientError(f"no policy server at ws://{host}:{port} after {timeout:g} s ({e}); start one: "
                                  "python -m shallow_pi_jax.serve --checkpoint DIR --env libero --port "
                                  f"{port}") from None
            time.sleep(1.0)
    # openpi-client 0.1.2 holds its connection the way websockets >= 14 deprecates (not as a context
    # manager); it works, and the warning would be printed on every run.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"openpi_client\.")
    return WebsocketClientPolicy(host, port)


# ----------------------------------------------------------------------------- files

def write_text(path: pathlib.Path, text: str) -> None:
    """Atomic: a reader (or a resumed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: pathlib.Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")


def write_video(path: pathlib.Path, frames) -> None:
    import imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".partial-{path.name}")  # imageio picks the codec by the suffix
    imageio.mimwrite(tmp, [np.asarray(f) for f in frames], fps=10)  # openpi's frame rate
    os.replace(tmp, path)


def parse_tasks(spec: str | None, n_tasks: int, suite: str) -> list[int]:
    if spec is None:
        return list(range(n_tasks))
    ids = []
    for part in spec.split(","):
        try:
            lo, _, hi = part.partition("-")
            ids.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise ClientError(f"--tasks: expected ids such as 0,3-5, got {spec!r}") from None
    bad = [i for i in ids if not 0 <= i < n_tasks]
    if bad:
        raise ClientError(f"--tasks: {suite} has tasks 0..{n_tasks - 1}, got {bad}")
    return sorted(set(ids))


def check_run_dir(out_dir: pathlib.Path, settings: dict) -> None:
    """Episodes already in out_dir count only if they were run the same way against the same policy."""
    run_file = out_dir / "run.json"
    settings = json.loads(json.dumps(settings))  # tuples become lists, as they come back from run.json
    if run_file.exists():
        try:
            previous = json.loads(run_file.read_text())
        except (OSError, ValueError) as e:
            raise ClientError(f"{run_file}: not readable JSON ({e}); pass another --out-dir") from None
        for key, value in settings.items():
            if previous.get(key) != value:
                raise ClientError(f"{run_file}: holds a run with {key} = {previous.get(key)!r}, this one has "
                                  f"{value!r}; pass another --out-dir (its episodes would not be comparable)")
    else:
        write_json(run_file, settings)


# ----------------------------------------------------------------------------- the loop

class Progress:
    """One line per episode: counts, success rate, env steps/s and the time left at this run's pace."""

    def __init__(self, total: int, done: int):
        self.total, self.done, self.start, self.ran = total, done, time.monotonic(), 0

    def episode(self, label: str, record: dict, wins: int, finished: int) -> None:
        self.done, self.ran = self.done + 1, self.ran + 1
        elapsed = time.monotonic() - self.start
        left = (self.total - self.done) * elapsed / self.ran
        t = record["timing"]  # the policy's steps only: env creation, reset and settling are not the loop
        rate = record["steps"] / max(t.get("env_s", 0) + t.get("preprocess_s", 0) + t.get("infer_s", 0), 1e-9)
        print(f"[{self.done}/{self.total}] {label}: {'success' if record['success'] else 'failure'} in "
              f"{record['steps']} steps ({rate:.1f} steps/s) | {wins}/{finished} = {100 * wins / finished:.1f} % "
              f"| ETA {time.strftime('%H:%M:%S', time.gmtime(left))}", flush=True)


def run_episode(env, client, init_state, prompt: str, args, max_steps: int) -> tuple[dict, list]:
    timing = collections.Counter()
    t0 = time.monotonic()
    env.reset()
    plan = collections.deque()
    obs = env.set_init_state(init_state)
    timing["reset_s"] = time.monotonic() - t0
    frames, done, t, queries, steps, error = [], False, 0, 0, 0, None
    while t < max_steps + args.num_wait:
        if t < args.num_wait:
            # The simulator drops objects at the start; the robot holds still (gripper open) while they settle.
            t1 = time.monotonic()
            obs, _, done, _ = env.step(DUMMY_ACTION)
            timing["wait_s"] += time.monotonic() - t1
            t += 1
            continue
        t1 = time.monotonic()
        img = preprocess_image(obs["agentview_image"], args.resize)
        frames.append(img)
        timing["preprocess_s"] += time.monotonic() - t1
        if not plan:
            t1 = time.monotonic()
            request = libero_request(obs, prompt, img, args.resize)
            t2 = time.monotonic()
            reply = client.infer(request)
            timing["infer_s"] += time.monotonic() - t2
            timing["preprocess_s"] += t2 - t1
            timing["server_infer_s"] += reply.get("server_timing", {}).get("infer_ms", 0.0) / 1000
            chunk = np.asarray(reply["actions"])
            if chunk.ndim != 2 or chunk.shape[1] != ACTION_DIM or len(chunk) < args.replan_steps:
                raise ClientError(f"server reply: expected actions of shape [>= {args.replan_steps} "
                                  f"(--replan-steps), {ACTION_DIM}], got {chunk.shape}; serve with --env libero")
            plan.extend(chunk[: args.replan_steps])
            queries += 1
        t1 = time.monotonic()
        try:
            obs, _, done, _ = env.step(plan.popleft().tolist())
        except Exception as e:  # noqa: BLE001 - openpi counts a simulator failure (e.g. unstable physics) a failure
            error = f"{type(e).__name__}: {e}"
            break
        finally:
            timing["env_s"] += time.monotonic() - t1
        steps += 1
        if done:
            break
        t += 1
    record = {"success": bool(done) and error is None, "steps": steps, "queries": queries,
              "seconds": time.monotonic() - t0, "timing": dict(timing)}
    if error:
        record["error"] = error
    return record, frames


def summarize(out_dir: pathlib.Path, suite: str) -> dict:
    """results.json / results.md from every episode file in out_dir (this run's and earlier ones)."""
    tasks, timing, steps, seconds = {}, collections.Counter(), 0, 0.0
    for path in sorted((out_dir / "episodes").glob("task*_ep*.json")):
        ep = json.loads(path.read_text())
        t = tasks.setdefault(ep["task_id"], {"task": ep["prompt"], "successes": 0, "trials": 0})
        t["successes"] += int(ep["success"])
        t["trials"] += 1
        timing.update(ep["timing"])
        steps += ep["steps"]
        seconds += ep["seconds"]
    wins = sum(t["successes"] for t in tasks.values())
    total = sum(t["trials"] for t in tasks.values())
    summary = {"suite": suite, "success_rate": wins / total if total else 0.0, "successes": wins, "trials": total,
               "tasks": {str(k): tasks[k] for k in sorted(tasks)}, "policy_steps": steps,
               "steps_per_s": steps / seconds if seconds else 0.0, "timing_s": dict(timing)}
    rows = [f"| {k} | {tasks[k]['task']} | {tasks[k]['successes']}/{tasks[k]['trials']} | "
            f"{100 * tasks[k]['successes'] / tasks[k]['trials']:.1f} % |" for k in sorted(tasks)]
    md = "\n".join([f"# {suite}: {100 * summary['success_rate']:.1f} % ({wins}/{total})", "",
                    "| task | instruction | successes | rate |", "|---|---|---|---|", *rows, ""])
    write_json(out_dir / "results.json", summary)
    write_text(out_dir / "results.md", md)
    return summary


def run_libero(args) -> dict:
    benchmark, get_libero_path, OffScreenRenderEnv = import_libero()
    client = connect(args.host, args.port, args.connect_timeout)
    metadata = client.get_server_metadata()
    if "env" in metadata and metadata["env"] != "libero":  # our server says which robot it expects
        raise ClientError(f"the server at {args.host}:{args.port} serves env {metadata['env']!r}, expected "
                          "'libero'; restart it with --env libero")
    np.random.seed(args.seed)  # as openpi, though set_init_state fixes each episode's start
    suite = benchmark.get_benchmark_dict()[args.suite]()
    task_ids = parse_tasks(args.tasks, suite.n_tasks, args.suite)
    max_steps = args.max_steps or MAX_STEPS[args.suite]
    out_dir = args.out_dir or pathlib.Path("libero_runs") / args.suite
    check_run_dir(out_dir, {"suite": args.suite, "seed": args.seed, "max_steps": max_steps,
                            "num_wait": args.num_wait, "replan_steps": args.replan_steps, "resize": args.resize,
                            "server": metadata})
    print(f"{args.suite}: tasks {task_ids[0]}..{task_ids[-1]} ({len(task_ids)}), {args.trials} episodes each, "
          f"{max_steps} steps max; writing {out_dir}", flush=True)

    def episode_file(task_id, ep):
        return out_dir / "episodes" / f"task{task_id:02d}_ep{ep:03d}.json"

    todo = [(i, e) for i in task_ids for e in range(args.trials) if not episode_file(i, e).exists()]
    total = len(task_ids) * args.trials
    if len(todo) < total:
        print(f"resuming: {total - len(todo)} of {total} episodes already in {out_dir / 'episodes'}", flush=True)
    progress = Progress(total, total - len(todo))
    for task_id in task_ids:
        task = suite.get_task(task_id)
        episodes = [e for i, e in todo if i == task_id]
        if not episodes:
            continue
        init_states = suite.get_task_init_states(task_id)
        if args.trials > len(init_states):
            raise ClientError(f"--trials {args.trials}: task {task_id} of {args.suite} has {len(init_states)} "
                              "fixed initial states (one per episode, as openpi)")
        bddl = pathlib.Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
        env = OffScreenRenderEnv(bddl_file_name=str(bddl), camera_heights=ENV_RESOLUTION,
                                 camera_widths=ENV_RESOLUTION)
        try:
            env.seed(args.seed)  # openpi: the seed moves objects even from a fixed initial state
            for ep in episodes:
                record, frames = run_episode(env, client, init_states[ep], task.language, args, max_steps)
                record.update(task_id=task_id, episode=ep, prompt=task.language)
                if args.video:
                    t1 = time.monotonic()
                    name = f"task{task_id:02d}_ep{ep:03d}_{'success' if record['success'] else 'failure'}.mp4"
                    write_video(out_dir / "videos" / name, frames)
                    record["video"] = f"videos/{name}"
                    record["timing"]["video_s"] = time.monotonic() - t1
                write_json(episode_file(task_id, ep), record)
                summary = summarize(out_dir, args.suite)
                progress.episode(f"task {task_id} episode {ep}", record, summary["successes"], summary["trials"])
        finally:
            env.close()  # frees the GL context now; at interpreter exit EGL is gone and robosuite's __del__ prints
    return summarize(out_dir, args.suite)


def run_demo(args) -> dict:
    """The same loop on ReachEnv (the server must run with --env demo)."""
    from shallow_pi_jax.sim.env import ReachEnv, rollout

    client = connect(args.host, args.port, args.connect_timeout)
    print(f"server metadata: {client.get_server_metadata()}")
    env = ReachEnv(seed=args.seed)

    def policy(obs):
        return np.asarray(client.infer({"observation/image": obs["image"],
                                        "observation/wrist_image": obs["wrist_image"],
                                        "observation/state": obs["state"], "prompt": obs["instruction"]})["actions"])

    wins = 0
    for trial in range(args.trials):
        wins += rollout(env, policy, seed=10_000 + trial, replan_every=args.replan_steps)["success"]
    return {"suite": "demo", "success_rate": wins / args.trials, "successes": int(wins), "trials": args.trials,
            "tasks": {"reach": {"successes": int(wins), "trials": args.trials}}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="localhost")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--suite", default="libero_spatial", choices=[*MAX_STEPS, "demo"])
    p.add_argument("--tasks", default=None, help="task ids to run, e.g. 0,3-5 (default: the whole suite)")
    p.add_argument("--trials", type=int, default=50, help="episodes per task (default 50, as openpi)")
    p.add_argument("--replan-steps", type=int, default=5, help="actions executed per chunk (default 5)")
    p.add_argument("--num-wait", type=int, default=10, help="settling steps before the policy acts (default 10)")
    p.add_argument("--max-steps", type=int, default=None, help="episode length (default: per suite, as openpi)")
    p.add_argument("--resize", type=int, default=224, help="image size sent to the server (default 224)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out-dir", type=pathlib.Path, default=None,
                   help="episodes, videos and result tables (default: libero_runs/SUITE); a rerun resumes")
    p.add_argument("--no-video", dest="video", action="store_false", help="do not write per-episode videos")
    p.add_argument("--connect-timeout", type=float, default=120.0, help="seconds to wait for the server")
    p.add_argument("--out", type=pathlib.Path, default=None, help="also write the summary JSON here")
    p.add_argument("--verbose", action="store_true", help="tracebacks with errors")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("trials", "replan_steps", "resize", "max_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ClientError(f"--{name.replace('_', '-')}: expected >= 1, got {value}")
    if args.num_wait < 0:
        raise ClientError(f"--num-wait: expected >= 0, got {args.num_wait}")
    start = time.monotonic()
    summary = run_demo(args) if args.suite == "demo" else run_libero(args)
    summary["seconds"] = time.monotonic() - start
    summary["replan_steps"] = args.replan_steps
    print(f"{args.suite}: success rate {100 * summary['success_rate']:.1f} % "
          f"({summary['successes']}/{summary['trials']})", flush=True)
    if args.out:
        write_json(args.out, summary)
    return 0


def run(argv=None) -> int:
    """main with the project's error convention (this script cannot import shallow_pi_jax.cli: its venv
    is LIBERO's): one `error: ...` line and exit 1, the traceback only when asked for."""
    argv = sys.argv[1:] if argv is None else argv
    verbose = "--verbose" in argv or os.environ.get("SHALLOW_PI_VERBOSE") == "1"
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("error: interrupted (finished episodes are kept; rerun the same command to resume)", file=sys.stderr)
        return 130
    except (ClientError, ValueError, OSError, RuntimeError) as e:
        if verbose:
            traceback.print_exc()
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run())
