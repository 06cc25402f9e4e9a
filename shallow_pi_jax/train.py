r"""Shallow-π distillation (and plain flow-matching training) of openpi π0 / π0.5 policies.

Embedded default (offline, CPU, minutes): demo data from the bundled simulator, the bundled
18-layer demo teacher, distilled to 6 layers:

    python -m shallow_pi_jax.train --config experiments/l6.py:demo --workdir /tmp/shallow_pi_demo

A real run (π0.5 teacher from openpi, LIBERO RLDS data; paper recipe: 30k steps, batch 64):

    python -m shallow_pi_jax.train --config experiments/l6.py --workdir runs/l6 \
        --config.teacher.params=/ckpt/pi05_libero/params \
        --config.data.datasets='[{"name": "libero_10_no_noops", "data_dir": "/data/rlds", "mapping": "libero"}]' \
        --config.data.norm_stats_path=/ckpt/pi05_libero/assets/physical-intelligence/libero/norm_stats.json \
        --config.data.tokenizer_path=/ckpt/paligemma_tokenizer.model

Re-running the same command resumes from the last complete checkpoint in --workdir.
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from shallow_pi_jax import demo, verbosity
from shallow_pi_jax.training import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. experiments/l6.py:demo.",
                                          lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, TensorBoard logs, exported student.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the libraries' INFO logs (absl, orbax, JAX, TensorFlow); "
                             "also SHALLOW_PI_VERBOSE=1.")


def run(config, workdir, *, max_steps: int | None = None, progress: bool = True):
    """Resolve the embedded default's placeholders, then train (see training.loop.run)."""
    return loop.run(demo.resolve(config), workdir, max_steps=max_steps, progress=progress)


def main(argv):
    del argv
    if _WORKDIR.value is None:
        raise app.UsageError("--workdir is required")
    verbosity.configure(_VERBOSE.value)
    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
