r"""Distil openpi's pi0_libero checkpoint (π0, 18 → 6 layers by default) with its own data settings.

    python -m shallow_pi_jax.train --config experiments/pi0_libero.py --workdir runs/pi0_libero_l6 \
        --config.teacher.params=/ckpt/pi0_libero/params \
        --config.data.norm_stats_path=/ckpt/pi0_libero/assets/physical-intelligence/libero \
        --config.data.tokenizer_path=/ckpt/paligemma_tokenizer.model

Data as openpi's pi0_libero TrainConfig: the four LIBERO *_no_noops suites mixed frame-uniformly, prompt
from the task, z-score norm with the teacher's physical-intelligence/libero stats, horizon 50, prompt 48
tokens, and openpi's extra_delta_transform=True kept (first 6 action dims relative to the state, gripper
absolute): that is how this teacher was trained. Distillation: the paper's (experiments/l6.py).
"""
from shallow_pi_jax.training import recipes


def get_config(arg=None):
    return recipes.openpi_distill_config("pi0_libero", student_depth=6, arg=arg)
