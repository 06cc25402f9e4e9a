"""One line for a failure of absl / ml_collections flag parsing of the trainer's command line."""
from __future__ import annotations

import ml_collections
from absl import flags

from shallow_pi_jax.training.recipes import load


def flag_error(error: Exception, argv) -> ValueError:
    """One line for a failure of absl / ml_collections flag parsing of train.py's `argv`.

    config_flags raises a bare KeyError/AttributeError for an unknown `--config.x`, and a config file
    that fails to load as a multi-line traceback; this works out from `argv` what was wrong."""
    argv = list(argv)
    spec = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
    if spec is not None:
        try:
            config = load(spec)
        except ValueError as e:  # no such file, a bad key=value after ':'
            return e
        except Exception as e:  # noqa: BLE001 - the config file's own bug, reported as one line
            return ValueError(f"config {spec}: {type(e).__name__}: {e}")
        for arg in argv:
            name, eq, value = arg.partition("=")
            if not name.startswith(("--config.", "--noconfig.")):
                continue
            path = name.split(".", 1)[1]
            node, parts = config, path.split(".")
            for depth, part in enumerate(parts):
                where = ".".join(["config", *parts[:depth]])
                if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                    keys = ", ".join(node.keys()) if isinstance(node, ml_collections.ConfigDict) else "none"
                    return ValueError(f"config.{path}: unknown key {part!r} (in {arg}); {where} has keys {keys}")
                if depth == len(parts) - 1 and eq and isinstance(error, flags.IllegalFlagValueError) \
                        and f"--config.{path}=" in str(error):
                    kind = node.get_type(part).__name__
                    return ValueError(f"config.{path}: expected {kind}, got {value!r} (in {arg})")
                node = node[part]
    lines = str(error).strip().splitlines()
    return ValueError(lines[0] if lines else type(error).__name__)

