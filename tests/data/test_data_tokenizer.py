"""openpi's PaliGemma prompt formats, with a tiny sentencepiece model trained here."""
import numpy as np
import pytest
import sentencepiece

from shallow_pi_jax.data.tokenizer import (
    PaligemmaTokenizer,
    discretize_state,
    pi05_prompt,
)


@pytest.fixture(scope="module")
def model_path(tokenizer):
    return tokenizer


@pytest.fixture(scope="module")
def sp(model_path):
    return sentencepiece.SentencePieceProcessor(model_file=model_path)


def test_special_ids_match_paligemma(sp):
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert len(sp.encode("\n")) == 1


def test_pi0_format_bos_cleaned_text_newline(model_path, sp):
    tok = PaligemmaTokenizer(model_path, max_len=40)
    tokens, mask = tok.tokenize("  pick_up the\nred block ")
    want = [sp.bos_id()] + sp.encode("pick up the red block") + sp.encode("\n")
    n = len(want)
    assert tokens.dtype == np.int32 and mask.dtype == bool and tokens.shape == (40,)
    assert tokens[:n].tolist() == want
    assert mask[:n].all() and not mask[n:].any()
    assert (tokens[n:] == 0).all()


def test_pi05_state_discretisation_by_hand():
    state = np.array([-1.0, -0.999, 0.0, 0.5, 0.99999, 1.0, -1.5], np.float32)
    assert discretize_state(state).tolist() == [0, 0, 128, 192, 255, 255, -1]
    assert pi05_prompt("open_it\n", state) == "Task: open it, State: 0 0 128 192 255 255 -1;\nAction: "


def test_pi05_format_tokens(model_path, sp):
    tok = PaligemmaTokenizer(model_path, max_len=120)
    state = np.array([0.1, -0.3], np.float32)
    tokens, mask = tok.tokenize("stack the cups", state)
    want = [sp.bos_id()] + sp.encode("Task: stack the cups, State: 140 89;\nAction: ")
    assert tokens[: len(want)].tolist() == want
    assert mask.sum() == len(want)


def test_truncates_to_max_len(model_path, sp):
    tok = PaligemmaTokenizer(model_path, max_len=5)
    tokens, mask = tok.tokenize("put the bowl on the plate")
    full = [sp.bos_id()] + sp.encode("put the bowl on the plate") + sp.encode("\n")
    assert len(full) > 5
    assert tokens.tolist() == full[:5] and mask.all()


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="tokenizer_path"):
        PaligemmaTokenizer(str(tmp_path / "nope.model"), 10)
