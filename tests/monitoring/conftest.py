"""A tiny random Llama whose tokenizer was fitted on the hospital's own notes: the tiny model
of tests/conftest.py splits clinical words into bytes, so heads on its encodings learn
nothing; with whole-word tokens, its mean-pooled random embeddings are a random projection
of the note's words, which linear heads can learn from (seconds on CPU)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest


def hospital_tiny_base(texts: list[str], out: Path, vocab: int = 4000, hidden: int = 256) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from lang1ops.tasks import DEFAULT_CONTRACT

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    prompts = [DEFAULT_CONTRACT.question_suffix(t) for t in DEFAULT_CONTRACT.tasks] + [f"Answer: {x}" for x in "ABCDE"] * 50
    backend.train_from_iterator(texts + prompts, trainer=trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        model_max_length=2048)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def small_hospital_base(small_dataset, tmp_path_factory) -> Path:
    notes = pd.read_parquet(small_dataset / "notes.parquet")
    return hospital_tiny_base(notes.loc[notes["split"] == "train", "text"].tolist(), tmp_path_factory.mktemp("base"))
