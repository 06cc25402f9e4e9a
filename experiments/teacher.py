r"""Plain flow-matching training of a full-depth π0 / π0.5 (no teacher). Trains the bundled demo teacher:

    python -m shallow_pi_jax.train --config experiments/teacher.py:demo --workdir /tmp/demo_teacher

Args after ':': demo, pi0.
"""
from shallow_pi_jax.training import config as train_config


def get_config(arg=None):
    return train_config.teacher_config(arg)
