"""shallow_pi_jax: Shallow-pi distillation of openpi pi0 / pi0.5 in JAX/Flax.

Layers, each importing only from those below it (checked by import-linter, see pyproject.toml):

    commands     train, launch, make_student, export_torch, export_onnx, export_checkpoint, evaluate,
                 layer_similarity, openpi_parity, compute_norm_stats, make_demo_dataset, aot_compile,
                 bench_*; also serve/__main__ and ablation/__main__. Each parses its flags, then imports
                 the library and calls it (so --help loads no JAX or TensorFlow); console scripts
                 shallow-pi-<command> (setup.py) run the same main().
    ablation                  the simulator ablation (its runner and report)
    demo                      the embedded default's demo teacher and data
    eval, perf, export        open/closed-loop evaluation and parity; FLOP counts and TPU AOT; PyTorch/ONNX
    serve, training           the servable Policy and websocket server; the distillation trainer
    sim                       the bundled simulator and its demo dataset
    data                      openpi's data pipeline, transforms, norm stats, tokenizer
    checkpoint                openpi params I/O and the policy directory format
    models                    π0 / π0.5 in Flax
    fileio, verbosity         atomic writes; library log levels
"""
import os

# TensorFlow's C++ INFO lines are printed when it is first imported, before any flag is parsed, so
# the default is set here; SHALLOW_PI_VERBOSE=1 (or the user's own TF_CPP_MIN_LOG_LEVEL) keeps them.
if os.environ.get("SHALLOW_PI_VERBOSE", "") in ("", "0"):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
