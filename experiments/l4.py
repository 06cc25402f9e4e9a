r"""π0.5 18 → 4 layer Shallow-π distillation (task + velocity KD + attention KD at the middle layer).

    python -m shallow_pi_jax.train --config experiments/l4.py:demo --workdir /tmp/l4_demo
    python -m shallow_pi_jax.train --config experiments/l4.py --workdir runs/l4 \
        --config.teacher.params=/ckpt/pi05_libero/params --config.data.tokenizer_path=...

Args after ':' (comma-separated): demo, pi0, task_only, kd, attn_all, attn_initial, attn_late, scratch, first
(see shallow_pi_jax/train_config.py).
"""
from shallow_pi_jax.training import config as train_config


def get_config(arg=None):
    return train_config.distill_config(student_depth=4, arg=arg)
