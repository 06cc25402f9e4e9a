"""PaliGemma prompt tokenisation in openpi's formats (the sentencepiece model path comes from config).

pi0:   [bos] + encode(cleaned text) + encode("\\n")          (state goes to the network separately)
pi0.5: [bos] + encode("Task: {text}, State: {s0 s1 ...};\\nAction: ")
       with the normalised state discretised into 256 bins over [-1, 1].
cleaned text = prompt stripped, "_" and "\\n" replaced by spaces. Padded with 0 (mask False) to
max_len; longer prompts are truncated with a warning, as openpi does.
"""
from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable

import numpy as np
import sentencepiece

from shallow_pi_jax import fileio

log = logging.getLogger(__name__)

STATE_BINS = 256


def clean_text(prompt: str) -> str:
    return prompt.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: np.ndarray) -> np.ndarray:
    """openpi's bins: digitize over linspace(-1, 1, 257)[:-1], minus one (values < -1 give -1)."""
    edges = np.linspace(-1.0, 1.0, STATE_BINS + 1)[:-1]
    return np.digitize(np.asarray(state), bins=edges) - 1


def pi05_prompt(prompt: str, state: np.ndarray) -> str:
    state_str = " ".join(str(int(v)) for v in discretize_state(state))
    return f"Task: {clean_text(prompt)}, State: {state_str};\nAction: "


class PaligemmaTokenizer:
    def __init__(self, model_path: str | os.PathLike, max_len: int):
        if not model_path or not fileio.source(model_path).is_file():
            raise ValueError(f"data.tokenizer_path: sentencepiece model {str(model_path)!r} does not exist")
        if max_len <= 0:
            raise ValueError(f"data.max_token_len: expected a positive int, got {max_len}")
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=fileio.source(model_path).read_bytes())
        self.max_len = int(max_len)
        self._newline = self._sp.encode("\n")
        if not self._newline:
            # PaliGemma's model has "\n" as a token (108); a model without it silently drops openpi's
            # start-of-answer token, so say so once.
            log.warning("tokenizer %s encodes '\\n' to nothing; pi0 prompts will lack openpi's '\\n' token",
                        model_path)
        self._warned_truncation = False

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def ids(self, prompt: str, state: np.ndarray | None = None) -> list[int]:
        """Unpadded token ids of one prompt (state given → pi0.5 discrete-state format)."""
        if state is not None:
            return self._sp.encode(pi05_prompt(prompt, state), add_bos=True)
        return self._sp.encode(clean_text(prompt), add_bos=True) + list(self._newline)

    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        ids = self.ids(prompt, state)
        n = len(ids)
        if n > self.max_len:
            if not self._warned_truncation:
                log.warning("prompt has %d tokens, more than max_token_len=%d; truncating (raise "
                            "data.max_token_len if this happens often)", n, self.max_len)
                self._warned_truncation = True
            ids, n = ids[: self.max_len], self.max_len
        tokens = np.zeros(self.max_len, np.int32)
        tokens[:n] = ids
        mask = np.zeros(self.max_len, bool)
        mask[:n] = True
        return tokens, mask

    def tokenize_batch(self, prompts, states: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        out = [self.tokenize(p, None if states is None else states[i]) for i, p in enumerate(prompts)]
        return np.stack([t for t, _ in out]), np.stack([m for _, m in out])

    def decode(self, tokens: np.ndarray) -> str:
        return self._sp.decode([int(t) for t in tokens])


def train_sentencepiece(texts: Iterable[str], vocab_size: int, **options) -> bytes:
    """A small BPE sentencepiece model (serialized) with PaliGemma's special ids and Gemma's text settings.

    pad 0, eos 1, bos 2, unk 3, "\\n" a piece, no normalisation or dummy prefix, digits split; for the
    tiny tokenizers of the demo data and the tests (the real one is PaliGemma's, never trained here).
    `options` are further sentencepiece trainer options (e.g. byte_fallback=True)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, user_defined_symbols=["\n"],
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        split_digits=True, minloglevel=2, **options)
    return model.getvalue()
