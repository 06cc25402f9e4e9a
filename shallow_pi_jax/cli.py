"""How every command ends on an error: one `error: …` line on stderr, a non-zero exit, no traceback.

A robotics engineer running a tool on a wrong path wants to read what was wrong (the path or field,
what was expected, what was found), not a stack. Errors the user can fix are raised as ValueError,
FileNotFoundError or another OSError with such a message; anything else is a bug and is reported
with its type, so it is still recognisable. `--verbose` (or SHALLOW_PI_VERBOSE=1) adds the
traceback.

    def main(argv=None) -> int: ...
    if __name__ == "__main__":
        sys.exit(cli.run(main))
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence

from shallow_pi_jax import verbosity

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

# Raised with a message that already says everything: no type name in front of it.
_USER_ERRORS = (ValueError, OSError, KeyError, TypeError)


def message(e: BaseException) -> str:
    """`e` as the text after `error: ` (a KeyError's repr quotes are dropped)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
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
    """Call `main(argv)`; return its exit status, or report an exception and return non-zero."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one place every command's errors end up
        report(e, verbose="--verbose" in args)
        return EXIT_ERROR
