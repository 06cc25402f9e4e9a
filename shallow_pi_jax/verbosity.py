"""Quiet by default: the commands show their progress and results, not the libraries' INFO logs.

absl, orbax, JAX and TensorFlow log at INFO level into the same terminal as the progress bar; a
command calls `configure(verbose)` once, after parsing its flags. `--verbose` or SHALLOW_PI_VERBOSE=1
brings the INFO logs (and full tracebacks) back; warnings always show.
"""
from __future__ import annotations

import logging
import os

from absl import logging as absl_logging

ENV = "SHALLOW_PI_VERBOSE"
_LIBRARIES = ("absl", "orbax", "jax", "jax._src", "tensorflow", "etils", "tensorstore")


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
    return verbose
