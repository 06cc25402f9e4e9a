"""Multi-host bootstrap: jax.distributed on TPU pod slices, multi-GPU clusters and shallow_pi_jax.launch."""
from __future__ import annotations

import os
import sys

import jax

_MULTIHOST_ENV = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES")
# Set by shallow_pi_jax.launch (or by hand on any cluster jax cannot detect): process 0's coordinator
# address, the number of processes and this process's id. jax reads only the address itself.
COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"
# Bounds, so that no process waits long on one that is gone: for all processes to connect, for a silent
# process to be declared dead (jax then ends the others), for the others at exit. The connect bound can be
# lowered with SHALLOW_PI_INIT_TIMEOUT_S (tests).
INIT_TIMEOUT_S, HEARTBEAT_TIMEOUT_S, SHUTDOWN_TIMEOUT_S = 120, 60, 30
INIT_TIMEOUT_ENV = "SHALLOW_PI_INIT_TIMEOUT_S"


def _env_int(name: str) -> int:
    text = os.environ.get(name, "")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}: expected an int, got {text!r}") from None


def launcher_env() -> tuple[str, int, int] | None:
    """(coordinator address, process count, process id) from the environment; None when not set."""
    if os.environ.get(NUM_PROCESSES_ENV) is None and os.environ.get(PROCESS_ID_ENV) is None:
        return None
    count, index = _env_int(NUM_PROCESSES_ENV), _env_int(PROCESS_ID_ENV)
    if count < 1:
        raise ValueError(f"{NUM_PROCESSES_ENV}: expected a process count >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"{PROCESS_ID_ENV}: expected a process id in 0..{count - 1} ({NUM_PROCESSES_ENV}={count}), "
                         f"got {index}")
    address = os.environ.get(COORDINATOR_ENV, "")
    if count > 1 and ":" not in address:
        raise ValueError(f"{COORDINATOR_ENV}: expected process 0's host:port, got {address!r}")
    return address, count, index


def maybe_initialize_distributed(mode: str) -> None:
    """jax.distributed on TPU pod slices / multi-GPU clusters / shallow_pi_jax.launch; a no-op on one host.

    Malformed JAX_NUM_PROCESSES / JAX_PROCESS_ID / JAX_COORDINATOR_ADDRESS raise a ValueError naming the
    variable. A process whose peers do not all connect within INIT_TIMEOUT_S is ended by jax itself
    (DEADLINE_EXCEEDED, exit status 134) after the line printed here; one whose job turns out to have
    another number of processes raises a ValueError."""
    if mode == "off":
        return
    given = launcher_env()
    if given is not None:
        address, count, index = given
        if count == 1 and mode != "on":
            return
        kwargs = dict(coordinator_address=address, num_processes=count, process_id=index)
    else:
        hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
        multi = any(os.environ.get(k) for k in _MULTIHOST_ENV if k != "TPU_WORKER_HOSTNAMES") or "," in hosts
        multi |= int(os.environ.get("SLURM_NTASKS", "1")) > 1 or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
        if not (mode == "on" or multi):
            return
        kwargs = {}
    timeout = _env_int(INIT_TIMEOUT_ENV) if os.environ.get(INIT_TIMEOUT_ENV) else INIT_TIMEOUT_S
    # Said first: when a peer never connects, jax ends this process itself (its own DEADLINE_EXCEEDED
    # message, exit status 134) without raising, and this line tells which process waited for what.
    where = (f"process {kwargs['process_id']} of {kwargs['num_processes']}, coordinator "
             f"{kwargs['coordinator_address']}" if kwargs else "process ids from the cluster's environment")
    print(f"jax.distributed: {where}; waiting up to {timeout} s for every process to connect",
          file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout,
                                   heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
                                   shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S)
    except Exception as e:  # noqa: BLE001 - jax raises XlaRuntimeError / RuntimeError with a long status text
        raise ValueError(f"jax.distributed.initialize failed ({where}; are all processes started, with one "
                         f"{NUM_PROCESSES_ENV} and distinct {PROCESS_ID_ENV}?): {' '.join(str(e).split())[:400]}"
                         ) from None
    if given is not None and jax.process_count() != given[1]:
        raise ValueError(f"{NUM_PROCESSES_ENV}={given[1]}, but the job has {jax.process_count()} processes")
