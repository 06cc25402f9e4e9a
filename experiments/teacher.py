r"""Plain flow-matching training of a full-depth π0 / π0.5 (no teacher). Trains the bundled demo teacher:

    python -m shallow_pi_jax.train --config experiments/teacher.py:size=demo --workdir /tmp/demo_teacher

Keys after ':' (comma-separated key=value; default first): model=pi05 | pi0, size=real | demo | tiny
(`size=demo` trains for 3000 steps: the bundled teacher's recipe). The bare words demo, tiny, pi0, pi05 are
short for one key=value each (`teacher.py:demo,pi0` = `teacher.py:size=demo,model=pi0`).
"""
from shallow_pi_jax.training import recipes


def get_config(arg=None):
    return recipes.teacher_config(arg)
