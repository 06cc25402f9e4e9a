"""The demo task's tokenizer: a sentencepiece model of every prompt ReachEnv's instructions make.

    path = cached_tokenizer()      # trained once (seconds), then read from the cache

The demo dataset stores the same model beside its episodes (demo_dataset.py); serving a demo
policy needs only this file, not the episodes.
"""
from __future__ import annotations

import hashlib
import pathlib

import numpy as np

from shallow_pi_jax import fileio
from shallow_pi_jax.data.tokenizer import train_sentencepiece
from shallow_pi_jax.sim.env import STATE_DIM
from shallow_pi_jax.sim.scene import all_instructions

TOKENIZER_VOCAB = 400  # >= 256 byte pieces + 4 specials; leaves room for whole words of the task


def train_tokenizer(vocab_size: int = TOKENIZER_VOCAB) -> bytes:
    """A sentencepiece model (serialized) for the task's prompts, PaliGemma's special ids and settings.

    Trained on every instruction the task can produce, bare and in openpi's pi0.5 prompt format
    ("Task: ..., State: ...;\\nAction: "), so it does not depend on which episodes were drawn.
    Like Gemma's tokenizer: no normalisation or dummy prefix, digits split, "\\n" a piece, and
    byte fallback so any text encodes.
    """
    rng = np.random.default_rng(0)
    texts = all_instructions()
    for text in all_instructions():
        for _ in range(3):
            state = " ".join(str(v) for v in rng.integers(0, 256, size=STATE_DIM))
            texts.append(f"Task: {text}, State: {state};\nAction: ")
    return train_sentencepiece(texts, vocab_size, byte_fallback=True, allow_whitespace_only_pieces=True,
                               hard_vocab_limit=False, num_threads=1)


def cached_tokenizer(cache: pathlib.Path | None = None) -> pathlib.Path:
    """train_tokenizer()'s model under `cache` (default: fileio.cache_dir()), trained on first use.

    Named by what it is trained on, so a change of the task's instructions trains a new one."""
    key = hashlib.sha256("\n".join([str(TOKENIZER_VOCAB), *all_instructions()]).encode()).hexdigest()[:12]
    path = (cache or fileio.cache_dir()) / f"demo_tokenizer_{key}.model"
    if not path.is_file():
        fileio.write_bytes(path, train_tokenizer())
    return path
