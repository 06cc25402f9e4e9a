r"""π0.5 18 → 4 layer Shallow-π distillation (task + velocity KD + attention KD at the middle layer).

    python -m shallow_pi_jax.train --config experiments/l4.py:size=demo --workdir /tmp/l4_demo
    python -m shallow_pi_jax.train --config experiments/l4.py --workdir runs/l4 \
        --config.teacher.params=/ckpt/pi05_libero/params --config.data.tokenizer_path=...

Keys after ':' (comma-separated key=value; default first; see shallow_pi_jax/training/recipes.py):
depth=4 | <int>, model=pi05 | pi0, size=real | demo | tiny, loss=full | kd | task_only,
attn_layer=middle | initial | late, attn_queries=action | all, init=teacher | scratch (random init, task loss only),
layer_map=uniform | first | last. The bare words demo, tiny, pi0, kd, attn_late, scratch, first, ...
are short for one key=value each (`l4.py:demo,pi0` = `l4.py:size=demo,model=pi0`).
"""
from shallow_pi_jax.training import recipes


def get_config(arg=None):
    return recipes.distill_config(student_depth=4, arg=arg)
