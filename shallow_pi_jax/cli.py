"""How every command ends on an error: one `error: …` line on stderr, a non-zero exit, no traceback.

A robotics engineer running a tool on a wrong path wants to read what was wrong (the path or field,
what was expected, what was found), not a stack. Errors the user can fix are raised as ValueError,
FileNotFoundError or another OSError with such a message; anything else is a bug and is reported
with its type, so it is still recognisable. `--verbose` (or SHALLOW_PI_VERBOSE=1) adds the
traceback.

    def main(argv=None) -> int:
        args = cli.parse(parser, argv)   # adds --verbose, parses, sets the log levels
        # Imported once the flags are parsed, so that --help answers without loading JAX or TensorFlow.
        from shallow_pi_jax.<library module> import <its function>
        <its function>(...)
        return 0

    def console() -> int:                # the console script shallow-pi-<command> (setup.py)
        return cli.run(main)

    if __name__ == "__main__":
        sys.exit(console())

A command module imports only argparse, this module and light library modules (configs, constants)
at its top.

A bad value of one flag, found after argparse (a range, a combination), is a UsageError: the same
`error: …` line, with argparse's exit status 2.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import traceback
from collections.abc import Callable, Sequence

from shallow_pi_jax import run_dir, verbosity

EXIT_ERROR = 1
EXIT_USAGE = 2  # argparse's own status for a bad command line
EXIT_INTERRUPTED = 130

class UsageError(ValueError):
    """A flag's value is wrong (exit status 2, like argparse's own usage errors)."""


# Raised with a message that already says everything: no type name in front of it.
_USER_ERRORS = (ValueError, OSError, KeyError, TypeError)


def message(e: BaseException) -> str:
    """`e` as the text after `error: ` (a KeyError's repr quotes are dropped)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    # Some messages list their details on further lines; the error stays one line.
    text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    if not text:
        text = type(e).__name__
    elif not isinstance(e, _USER_ERRORS):
        text = f"{type(e).__name__}: {text}"
    return text


def report(e: BaseException, *, verbose: bool = False) -> None:
    if verbosity.requested(verbose):
        traceback.print_exception(e)
    print(f"error: {message(e)}", file=sys.stderr, flush=True)


def run(main: Callable[..., int | None], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv)`; return its exit status, or report an exception and return non-zero.

    A `main` may return what it made (a path, results) for callers in Python: anything but an int
    is success."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        status = main(argv)
        return status if isinstance(status, int) else 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one place every command's errors end up
        report(e, verbose="--verbose" in args)
        return EXIT_USAGE if isinstance(e, UsageError) else EXIT_ERROR


def add_verbose(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' INFO logs and, on an error, the traceback "
                             f"(also {verbosity.ENV}=1)")
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse with a --verbose flag added, then set the libraries' log levels from it."""
    args = add_verbose(parser).parse_args(argv)
    verbosity.configure(args.verbose)
    return args


def policy_path(path) -> pathlib.Path:
    """The policy directory a command-line path names: a trainer's run directory means the student
    it wrote (RUN/student); anything else is returned as given, for policy_dir.read to judge.

    A run still training has no student yet; saying so beats "not a checkpoint"."""
    p = pathlib.Path(path).expanduser()
    if not p.is_dir() or (p / "params").exists() or (p / "_METADATA").exists():
        return p
    if (p / run_dir.STUDENT).is_dir():
        return p / run_dir.STUDENT
    if (p / run_dir.CHECKPOINTS).is_dir() and (p / run_dir.CONFIG).is_file():
        raise FileNotFoundError(f"{p}: a training run without {run_dir.STUDENT}/ (the trainer writes it at the end); "
                                f"export a saved step with python -m shallow_pi_jax.export_checkpoint --workdir {p} "
                                "--out DIR")
    return p


def add_data_flags(p: argparse.ArgumentParser) -> None:
    """The held-out data of the evaluation commands (evaluate, layer_similarity; eval/open_loop.eval_data_config)."""
    p.add_argument("--env", default="demo", help="robot preset: demo, libero, droid, aloha (default: demo)")
    p.add_argument("--data-dir", default=None, help="tfds data_dir of the RLDS dataset (default for demo: "
                                                     "held-out demo episodes built offline)")
    p.add_argument("--dataset", default=None, help="tfds dataset name")
    p.add_argument("--split", default="train", help="tfds split of held-out episodes, e.g. 'train[-10%%:]'")
    p.add_argument("--episodes", type=int, default=20, help="held-out demo episodes (demo only; default 20)")
    p.add_argument("--tokenizer", default=None, help="sentencepiece model (default for demo: the demo's)")
    p.add_argument("--norm-stats", default=None, help="norm_stats.json (default: the checkpoint's assets/)")
    p.add_argument("--batch-size", type=int, default=16)
