"""Quiet by default: the commands show their progress and results, not the libraries' INFO logs.

absl, orbax, JAX and TensorFlow log at INFO level into the same terminal as the progress bar; a
command calls `configure(verbose)` once, after parsing its flags. `--verbose` or SHALLOW_PI_VERBOSE=1
brings the INFO logs (and full tracebacks) back; warnings always show.

libtpu (installed with the test and tpu extras) is probed by JAX on every start and, on a host
without TPU chips, prints worker-metadata errors that say nothing about the run. Where no TPU chip
is attached, `configure` describes this host as the single host it is, which silences them; TPU
hosts are left to libtpu's own discovery.
"""
from __future__ import annotations

import glob
import logging
import os
import pathlib

from absl import logging as absl_logging

ENV = "SHALLOW_PI_VERBOSE"
_LIBRARIES = ("absl", "orbax", "jax", "jax._src", "tensorflow", "etils", "tensorstore")
_GOOGLE_PCI_VENDOR = "0x1ae0"  # how JAX itself finds TPU chips (jax._src.hardware_utils)
# A single host of its own: what libtpu would otherwise ask the (absent) TPU metadata server for.
_NO_TPU_ENV = {"TPU_WORKER_HOSTNAMES": "localhost", "TPU_HOST_BOUNDS": "1,1,1", "TPU_SKIP_MDS_QUERY": "1"}


def requested(flag: bool = False) -> bool:
    return bool(flag) or os.environ.get(ENV, "") not in ("", "0")


def configure(verbose: bool = False) -> bool:
    """Set the libraries' log levels; returns whether verbose output was asked for."""
    verbose = requested(verbose)
    level = logging.INFO if verbose else logging.WARNING
    absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
    for name in _LIBRARIES:
        logging.getLogger(name).setLevel(level)
    # TensorFlow's Python-side warnings are deprecation notices about tf.data internals we do not call.
    logging.getLogger("tensorflow").setLevel(level if verbose else logging.ERROR)
    if not verbose and not tpu_attached():
        quiet_libtpu()
    return verbose


def tpu_attached() -> bool:
    return any(pathlib.Path(p).read_text().strip() == _GOOGLE_PCI_VENDOR
               for p in glob.glob("/sys/bus/pci/devices/*/vendor"))


def quiet_libtpu() -> None:
    """For a host without TPU chips (also compile-only use of libtpu); takes effect if set before JAX
    starts its backends (commands import JAX after parsing their flags). The user's own values win."""
    for name, value in _NO_TPU_ENV.items():
        os.environ.setdefault(name, value)
