r"""Distil openpi's pi05_droid checkpoint (π0.5, 18 → 6 layers by default) with its own data settings.

    python -m shallow_pi_jax.train --config experiments/pi05_droid.py --workdir runs/pi05_droid_l6 \
        --config.teacher.params=/ckpt/pi05_droid/params \
        --config.data.norm_stats_path=/ckpt/pi05_droid/assets/droid \
        --config.data.tokenizer_path=/ckpt/paligemma_tokenizer.model

Data as openpi's pi05_droid TrainConfig: exterior camera 1 (or 2) + left wrist, right wrist masked, state =
7 joint positions + gripper, actions = 7 joint velocities + gripper position (what pi05_droid was trained
on), no delta transform, quantile norm with the teacher's droid stats, the state in the prompt (π0.5's
default, kept by openpi's config), horizon 15. DROID RLDS under $TFDS_DATA_DIR (or set data.datasets).
Distillation: the paper's (experiments/l6.py).
"""
from shallow_pi_jax.training import recipes


def get_config(arg=None):
    return recipes.openpi_distill_config("pi05_droid", student_depth=6, arg=arg)
