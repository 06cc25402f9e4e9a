r"""Distil openpi's pi05_libero checkpoint (π0.5, 18 → 6 layers by default) with its own data settings.

    python -m shallow_pi_jax.train --config experiments/pi05_libero.py --workdir runs/pi05_libero_l6 \
        --config.teacher.params=/ckpt/pi05_libero/params \
        --config.data.norm_stats_path=/ckpt/pi05_libero/assets/physical-intelligence/libero \
        --config.data.tokenizer_path=/ckpt/paligemma_tokenizer.model

Data as openpi's pi05_libero TrainConfig: the four LIBERO *_no_noops suites (spatial, object, goal, 10)
mixed frame-uniformly, prompt from the task, no delta transform, quantile norm with the teacher's
physical-intelligence/libero stats, state not in the prompt, horizon 10, prompt 200 tokens. RLDS data
under $TFDS_DATA_DIR (or set data.datasets). Distillation: the paper's (experiments/l6.py). Keys after
':' as l6.py's except model and size (depth=4, loss=kd, ...).
"""
from shallow_pi_jax.training import recipes


def get_config(arg=None):
    return recipes.openpi_distill_config("pi05_libero", student_depth=6, arg=arg)
