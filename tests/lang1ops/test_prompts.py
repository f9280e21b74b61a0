"""Prompt token ids (note truncation, suffixes, option tokens) and the naive scorer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lang1ops.base_model import load_causal_lm, load_tokenizer
from lang1ops.prompts import SAMPLE_ADMISSION_NOTE, PromptEncoder, score_naive
from lang1ops.tasks import DEFAULT_CONTRACT

LONG_NOTE = " ".join(
    ["Patient admitted with pneumonia and acute kidney injury, started on ceftriaxone."] * 40
)
OTHER_NOTE = "Discharged home in stable condition; follow up in clinic."


@pytest.fixture(params=[True, False], ids=["bos", "no-bos"])
def tokenizer(request, make_tiny_tokenizer) -> PreTrainedTokenizerFast:
    return make_tiny_tokenizer(add_bos=request.param)


def plain_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_special_prefix_is_the_tokenizers_bos(tokenizer) -> None:
    expected = [tokenizer.bos_token_id] if tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id else []
    assert PromptEncoder(tokenizer).prefix_ids == expected
    assert PromptEncoder(tokenizer).encode_note(OTHER_NOTE) == expected + plain_ids(tokenizer, OTHER_NOTE)


@pytest.mark.parametrize("limit", [1, 17, 64])
def test_note_is_right_truncated_to_exactly_n_tokens(tokenizer, limit: int) -> None:
    encoder = PromptEncoder(tokenizer, max_note_tokens=limit)
    encoding = encoder.note_encoding(LONG_NOTE)
    full = plain_ids(tokenizer, LONG_NOTE)
    assert len(full) > limit
    assert encoding.ids == encoder.prefix_ids + full[:limit]  # BOS, if any, not counted in the limit
    assert (encoding.kept_tokens, encoding.note_tokens, encoding.truncated) == (limit, len(full), True)
    assert encoder.note_was_truncated(LONG_NOTE)


def test_note_of_exactly_n_tokens_is_not_truncated(tokenizer) -> None:
    n = len(plain_ids(tokenizer, OTHER_NOTE))
    assert not PromptEncoder(tokenizer, max_note_tokens=n).note_was_truncated(OTHER_NOTE)
    assert PromptEncoder(tokenizer, max_note_tokens=n - 1).note_was_truncated(OTHER_NOTE)


def test_default_limit_comes_from_the_contract(tokenizer) -> None:
    assert PromptEncoder(tokenizer).max_note_tokens == DEFAULT_CONTRACT.max_note_tokens == 512
    with pytest.raises(ValueError, match="positive"):
        PromptEncoder(tokenizer, max_note_tokens=0)


@pytest.mark.parametrize("task", DEFAULT_CONTRACT.names)
def test_prompt_is_note_ids_then_a_note_independent_suffix(tokenizer, task: str) -> None:
    encoder = PromptEncoder(tokenizer, max_note_tokens=32)
    suffix = encoder.suffix_ids(task)
    assert suffix == plain_ids(tokenizer, DEFAULT_CONTRACT.question_suffix(task))
    for note in (LONG_NOTE, OTHER_NOTE, ""):
        assert encoder.prompt_ids(note, task) == encoder.encode_note(note) + suffix


@pytest.mark.parametrize("task", DEFAULT_CONTRACT.names)
def test_option_ids_are_the_single_answer_tokens(tokenizer, task: str) -> None:
    ids = PromptEncoder(tokenizer).option_token_ids(task)
    assert [tokenizer.decode([i]) for i in ids] == DEFAULT_CONTRACT.answer_tokens(task)
    assert len(set(ids)) == len(ids)


def test_multi_token_answer_letter_is_refused() -> None:
    # Byte-level BPE without merges: " A" is two tokens (the space and the letter).
    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bytes_only = PreTrainedTokenizerFast(tokenizer_object=backend, name_or_path="bytes-only")
    with pytest.raises(ValueError, match=r"tokenizer bytes-only .* option A \(' A'\) as 2 tokens"):
        PromptEncoder(bytes_only).option_token_ids("mortality")


def test_unknown_task_is_a_key_error(tokenizer) -> None:
    with pytest.raises(KeyError, match="unknown task"):
        PromptEncoder(tokenizer).suffix_ids("sepsis")


def test_score_naive_matches_a_hand_computation(tiny_llama_dir: Path) -> None:
    model = load_causal_lm(tiny_llama_dir)
    encoder = PromptEncoder(load_tokenizer(tiny_llama_dir), max_note_tokens=64)
    scores = score_naive(model, encoder, SAMPLE_ADMISSION_NOTE, DEFAULT_CONTRACT.names)
    assert list(scores) == DEFAULT_CONTRACT.names
    for task, probabilities in scores.items():
        with torch.no_grad():
            logits = model(torch.tensor([encoder.prompt_ids(SAMPLE_ADMISSION_NOTE, task)])).logits
        option_logits = logits[0, -1, encoder.option_token_ids(task)].double().numpy()
        expected = np.exp(option_logits - option_logits.max())
        expected /= expected.sum()
        assert probabilities.dtype == np.float64
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(probabilities, expected, rtol=1e-6)


@pytest.fixture(scope="module")
def sentencepiece_tokenizer(tmp_path_factory):
    """A Llama-2-style tokenizer (SentencePiece BPE, byte fallback, dummy prefix, legacy), the
    kind Lang1 checkpoints use, trained here on a small corpus: no download."""
    import random

    import sentencepiece as spm
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("sp-tokenizer")
    rng = random.Random(0)
    words = ("patient admitted with chest pain sepsis shock history of diabetes heart failure discharged home "
             "Given the above admission note will die during hospital days").split()
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(3000)]
    lines += [f"Question: will the patient die?\nA. no\nB. yes\nAnswer: {x}" for x in "ABCDE"] * 50
    lines += [" ".join(rng.choice("ABCDE") for _ in range(20)) for _ in range(2000)]  # " A".." E": single pieces
    (root / "corpus.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(input=str(root / "corpus.txt"), model_prefix=str(root / "tokenizer"), vocab_size=400,
                                   model_type="bpe", byte_fallback=True, add_dummy_prefix=True, split_digits=True,
                                   allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
                                   normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   minloglevel=2)
    (root / "tok").mkdir()
    (root / "tokenizer.model").rename(root / "tok" / "tokenizer.model")
    (root / "tok" / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "LlamaTokenizer", "legacy": true, "add_bos_token": true, "add_eos_token": false, '
        '"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}')
    return AutoTokenizer.from_pretrained(str(root / "tok"))


@pytest.mark.parametrize("task", DEFAULT_CONTRACT.names)
def test_prompt_tokens_match_the_jointly_tokenized_prompt_on_a_sentencepiece_tokenizer(sentencepiece_tokenizer, task):
    """Llama-2's tokenizer starts a text tokenized alone with a lone dummy-prefix token; the
    question must not carry one after the note, or the served prompt differs from the paper's."""
    tok = sentencepiece_tokenizer
    suffix = DEFAULT_CONTRACT.question_suffix(DEFAULT_CONTRACT.task(task))
    alone = tok(suffix, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(alone[:1]) == ["\u2581"]  # the pitfall is real on this tokenizer
    encoder = PromptEncoder(tok, DEFAULT_CONTRACT, 64)
    note = "patient admitted with chest pain and sepsis"
    assert encoder.prompt_ids(note, task) == tok(note + suffix)["input_ids"]
    assert len(encoder.option_token_ids(task)) == DEFAULT_CONTRACT.task(task).n_classes


def test_suffix_tokens_are_unchanged_on_a_byte_level_bpe_tokenizer(tokenizer):
    """SmolLM2's kind (byte-level BPE, no dummy prefix): the question's tokens after a note are
    its tokens alone, so models trained before the change keep their prompts."""
    encoder = PromptEncoder(tokenizer, DEFAULT_CONTRACT, 64)
    for task in DEFAULT_CONTRACT.names:
        assert encoder.suffix_ids(task) == plain_ids(tokenizer, DEFAULT_CONTRACT.question_suffix(DEFAULT_CONTRACT.task(task)))
