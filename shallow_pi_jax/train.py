r"""Shallow-π distillation (and plain flow-matching training) of openpi π0 / π0.5 policies.

Embedded default (offline, CPU, minutes): demo data from the bundled simulator, the bundled
18-layer demo teacher, distilled to 6 layers:

    python -m shallow_pi_jax.train --config experiments/l6.py:demo --workdir /tmp/shallow_pi_demo

The real job: openpi's pi05_libero distilled 18 → 6 layers with the paper's recipe (30k steps,
batch 64; its data settings: the four LIBERO *_no_noops suites under $TFDS_DATA_DIR):

    python -m shallow_pi_jax.train --config experiments/pi05_libero.py --workdir runs/l6 \
        --config.teacher.params=/ckpt/pi05_libero/params \
        --config.data.norm_stats_path=/ckpt/pi05_libero/assets/physical-intelligence/libero/norm_stats.json \
        --config.data.tokenizer_path=/ckpt/big_vision/paligemma_tokenizer.model

Every experiment choice is a flag: `--config FILE.py:key=value,...` (the file's own arguments) and
`--config.x=y` (any field of the config).

Re-running the same command resumes from the newest checkpoint in --workdir that restores (a
corrupt newer one is moved to checkpoints_bad/ and named). A resume whose config changes what was
trained (anything but num_steps, log/checkpoint cadence, wandb, mesh, remat and data loading
speed) is refused with the differing keys, unless --force (the old config.json is then kept as
config.json.<n>). Any error ends the process with one `error: ...` line and exit status 1
(the traceback with --verbose).
"""
from __future__ import annotations

import faulthandler
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from shallow_pi_jax import cli, verbosity
from shallow_pi_jax.training.flag_errors import flag_error

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file[:key=value,...], e.g. experiments/pi05_libero.py or "
    "experiments/l6.py:demo; --config.x=y sets any field.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard logs, exported student.")
_FORCE = flags.DEFINE_bool("force", False, "Resume even when the config changes what the run's checkpoints were "
                           "trained with (model, depth, layer map, teacher, data, loss, optimizer, batch, seed); "
                           "the old config.json is kept as config.json.<n>.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the libraries' INFO logs (absl, orbax, JAX, TensorFlow) and, "
                             "on an error, the traceback; also SHALLOW_PI_VERBOSE=1.")

# A safety net, not the fix: the known hangs are fixed where they arise (DataIterator.close,
# RunCheckpoints' synchronous directory creation). After the error is reported the process only has
# to exit; should a library thread still block that (orbax's commit threads are not daemons and wait
# up to 20 minutes for signals of a failed save; TF's threads can block interpreter shutdown), the
# process is ended this many seconds later. Checkpoints are committed atomically: nothing complete
# is lost by not waiting.
EXIT_GRACE_S = 30


class _QuietOrbaxErrors(logging.Filter):
    """orbax logs every failed background save with a traceback per thread (75 for a full disk); the
    same error reaches the training loop and is reported once, as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def _quiet_closed_loop(default):
    """orbax closes the event loop of a failed save while tensorstore's writes still complete into it;
    each completion is an unraisable "Event loop is closed" (110 tracebacks for one full disk). The
    save's own error is reported once."""
    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
            return
        default(unraisable)
    return hook


def run(config, workdir, *, max_steps: int | None = None, progress: bool = True, force: bool = False):
    """Resolve the config into a plan, prepare the embedded default's data and teacher, then train (see
    training.loop.run)."""
    # Imported here, not at the top: --help then answers without loading JAX or TensorFlow.
    from shallow_pi_jax import demo
    from shallow_pi_jax.training import loop
    from shallow_pi_jax.training import plan as run_plan

    # Resolved (and so checked) before the demo is prepared: preparing may build the demo data and train a
    # demo teacher (minutes), which a config that cannot run must not wait for.
    plan = demo.prepare(run_plan.resolve(config))
    return loop.run(plan, workdir, max_steps=max_steps, progress=progress, force=force)


def _parse_flags(argv):
    if any(a in ("-h", "--help", "--helpshort") for a in argv[1:]):
        # absl's own --help ends with status 1, and shows the docstring and flags of __main__ (none
        # under a console script). Asking for help is no error: like every command, the docstring,
        # then the flags, on stdout.
        print(__doc__.strip() + "\n" + flags.FLAGS.module_help(flags.FLAGS.find_module_defining_flag("workdir")))
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - config_flags raises bare KeyError/AttributeError for --config.x
        cli.report(flag_error(e, argv), verbose="--verbose" in argv)
        sys.exit(cli.EXIT_USAGE)


def _exit_soon(verbose: bool) -> None:
    # faulthandler's watchdog is a C thread: it fires even while the interpreter is shutting down,
    # when no Python thread can run any more. With --verbose it shows where the exit was stuck.
    out = sys.stderr if verbose else open(os.devnull, "w")  # noqa: SIM115 - open until the process ends
    faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True, file=out)


def main(argv):
    del argv
    verbose = verbosity.configure(_VERBOSE.value)
    if not verbose:
        logging.getLogger("absl").addFilter(_QuietOrbaxErrors())
        sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)
    try:
        if _WORKDIR.value is None:
            raise cli.UsageError("--workdir is required")
        try:
            config = _CONFIG.value
            config.to_dict()  # config_flags stands in an object that raises on first use for a file that failed
        except Exception as e:  # noqa: BLE001 - config_flags loads the file lazily, here
            raise flag_error(e, sys.argv) from None
        run(config, _WORKDIR.value, force=_FORCE.value)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        _exit_soon(verbose)
        return cli.EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - every error ends here, as one line
        cli.report(e, verbose=verbose)
        _exit_soon(verbose)
        return cli.EXIT_USAGE if isinstance(e, cli.UsageError) else cli.EXIT_ERROR
    return 0


def console() -> None:
    """The console script (setup.py), and python -m: absl parses the flags, then main runs."""
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    console()
