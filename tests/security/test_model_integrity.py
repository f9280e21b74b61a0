"""A model is served only if its files still hash to what the registry recorded at registration."""

from __future__ import annotations

import pytest


def test_a_tampered_artifact_is_refused_and_the_current_model_keeps_serving(tiny_llama_dir, tmp_path):
    from lang1ops.registry import Registry
    from lang1ops.tasks import DEFAULT_CONTRACT
    from serving.backends import ActiveModel, ModelIntegrityError, resolve_model
    from training.artifacts import zero_shot_artifact

    registry = Registry(tmp_path / "registry")
    for tag in ("a", "b"):
        registry.register(zero_shot_artifact(tiny_llama_dir, tmp_path / tag, DEFAULT_CONTRACT, 32, name="lang1-ops"),
                          "test", f"model {tag}")
    active = ActiveModel()
    active.load(resolve_model("v0001", registry.root, "lang1-ops"), None, "cpu", "float32", 4)
    assert active.version == "v0001"
    second = resolve_model("v0002", registry.root, "lang1-ops")
    contract = second.path / "contract.json"  # a zero-shot artifact's own files: its questions and options
    contract.write_text(contract.read_text().replace('"A"', '"B"', 1))
    with pytest.raises(ModelIntegrityError, match="content hash"):
        active.load(second, None, "cpu", "float32", 4)
    assert active.version == "v0001"  # still answering with the intact model
