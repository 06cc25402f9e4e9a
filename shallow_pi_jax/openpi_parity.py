"""Check our Flax π0 / π0.5 against openpi's own outputs.

    python -m shallow_pi_jax.openpi_parity tests/fixtures/openpi_tiny/pi05 [--save-outputs OUT.npz]

FIXTURE_DIR holds `config.json` (sizes), `params/` (an openpi orbax checkpoint) and `io.npz`
(inputs, the noise and time openpi drew, and openpi's outputs). Prints max-abs errors and exits 1
when any is above tolerance (1e-5 for prefix tokens, v_t and loss; 1e-4 for sample_actions). Also
the way to check a converted or re-saved checkpoint: point FIXTURE_DIR's params/ at it.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

from shallow_pi_jax import cli


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixture_dir", type=pathlib.Path, help="folder with config.json, params/ and io.npz")
    ap.add_argument("--save-outputs", type=pathlib.Path, metavar="OUT.npz",
                    help="write the v_t, loss and sample_actions we computed")
    args = cli.parse(ap, argv)
    for name in ("config.json", "io.npz", "params"):
        if not (args.fixture_dir / name).exists():
            raise FileNotFoundError(f"fixture_dir: {args.fixture_dir / name} does not exist "
                                    "(expected config.json, params/ and io.npz)")

    # Imported once the flags are parsed, so that --help answers without loading JAX.
    from shallow_pi_jax.eval.parity import check_fixture

    return 0 if check_fixture(args.fixture_dir, args.save_outputs) else 1

def console() -> int:
    """The console script (setup.py): the same as python -m."""
    return cli.run(main)


if __name__ == "__main__":
    sys.exit(console())
