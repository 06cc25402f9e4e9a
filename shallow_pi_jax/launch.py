r"""Run the trainer as N processes of one multi-process JAX job on this machine.

    python -m shallow_pi_jax.launch --processes 2 --devices-per-process 4 -- \
        --config experiments/l6.py:tiny --workdir /tmp/l6_2x4

Each process runs `python -m shallow_pi_jax.train ARGS` (the arguments after `--`) with the
coordinator's address, the process count and its own id in its environment (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID); the trainer calls jax.distributed.initialize with them. That is
the code path of a TPU pod, where every host runs the same command and jax.distributed.initialize()
finds all three in the TPU environment itself (docs/tpu.md). `--devices-per-process K` gives each
process K simulated CPU devices talking through gloo: a pod's data and checkpoint layout, tested on
one CPU machine.

Every output line is prefixed with its process id (`[1] ...`). When a process exits with an error
the others are stopped (SIGTERM, then SIGKILL after --grace seconds): a job never waits on a dead
peer. The exit status is the first failing process's (128 + signal number for a killed one), 0 when
all succeed.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from shallow_pi_jax import cli

# Read by training.distributed.maybe_initialize_distributed (jax itself reads only the address).
COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict, index: int, count: int, port: int, devices: int | None) -> dict:
    env = dict(base, **{COORDINATOR_ENV: f"127.0.0.1:{port}", NUM_PROCESSES_ENV: str(count),
                        PROCESS_ID_ENV: str(index)})
    if devices is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_COUNT_FLAG)]
        env["XLA_FLAGS"] = " ".join([*flags, f"{_DEVICE_COUNT_FLAG}={devices}"])
        env["JAX_PLATFORMS"] = "cpu"
        # CPU devices of different processes exchange collectives through gloo (jax reads this variable
        # as its jax_cpu_collectives_implementation option).
        env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    return env


def _die_with_parent():
    # Linux: a child gets SIGKILL when the launcher dies, even by SIGKILL, so no trainer outlives it.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pipe(stream, prefix: str, out) -> None:
    for line in stream:  # text mode: a progress bar's '\r' ends a line too
        out.write(f"{prefix}{line if line.endswith(chr(10)) else line + chr(10)}")
        out.flush()


def exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def launch(command: list[str], count: int, devices: int | None, port: int | None = None,
           grace_s: float = 10.0, env: dict | None = None) -> int:
    """Start `count` processes of `command`; return the job's exit status (see the module docstring)."""
    port = free_port() if port is None else port
    base = dict(os.environ if env is None else env)
    procs, pipes = [], []
    first_failure = None
    try:
        for i in range(count):
            p = subprocess.Popen(command, env=process_env(base, i, count, port, devices), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                 preexec_fn=_die_with_parent if sys.platform == "linux" else None)
            procs.append(p)
            print(f"launch: process {i} of {count}: pid {p.pid}", flush=True)
        # Readers start after the last fork: preexec_fn is only safe while this process has one thread.
        for i, p in enumerate(procs):
            pipes += [threading.Thread(target=_pipe, args=(p.stdout, f"[{i}] ", sys.stdout), daemon=True),
                      threading.Thread(target=_pipe, args=(p.stderr, f"[{i}] ", sys.stderr), daemon=True)]
        for t in pipes:
            t.start()
        # Every process is polled each round (a short-circuiting any() would leave a dead process 1 unseen
        # while process 0 runs): the failure reported is the first one seen, not the lowest id.
        while None in [p.poll() for p in procs]:
            failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed:
                first_failure = failed[0]
                break
            time.sleep(0.2)
        if first_failure is None:
            failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
            first_failure = failed[0] if failed else None
        if first_failure is not None and any(p.poll() is None for p in procs):
            i, rc = first_failure
            print(f"launch: process {i} exited with status {exit_status(rc)}; stopping the other processes",
                  file=sys.stderr, flush=True)
    finally:
        _stop(procs, grace_s)
        for t in pipes:
            t.join(timeout=5)
    if first_failure is None:
        return 0
    return exit_status(first_failure[1])


def _stop(procs, grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shallow_pi_jax.launch", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, required=True, help="number of trainer processes (>= 1)")
    parser.add_argument("--devices-per-process", type=int, default=None,
                        help="simulated CPU devices per process (gloo collectives); omit to use the real devices")
    parser.add_argument("--port", type=int, default=None, help="coordinator port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds the other processes get to exit after one failed, before SIGKILL")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the trainer's arguments")
    args = cli.parse(parser, argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    if args.processes < 1:
        raise cli.UsageError(f"--processes: expected an int >= 1, got {args.processes}")
    if args.devices_per_process is not None and args.devices_per_process < 1:
        raise cli.UsageError(f"--devices-per-process: expected an int >= 1, got {args.devices_per_process}")
    if args.port is not None and not 0 < args.port < 65536:
        raise cli.UsageError(f"--port: expected 1..65535, got {args.port}")
    if not train_args:
        raise cli.UsageError("expected the trainer's arguments after --, e.g. -- --config experiments/l6.py:tiny "
                             "--workdir /tmp/run")
    command = [sys.executable, "-m", "shallow_pi_jax.train", *train_args]
    # The launcher's own SIGTERM (a scheduler, a test's timeout) stops the job like a failed process does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    return launch(command, args.processes, args.devices_per_process, args.port, args.grace)


def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
