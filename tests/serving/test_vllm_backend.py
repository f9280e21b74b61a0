"""The vLLM backend imports everywhere and refuses clearly where vLLM is absent (CPU, CI);
on a GPU machine with vLLM it must match the PyTorch scorer."""

from __future__ import annotations

import pytest

from serving import vllm_backend


def test_module_imports_without_vllm_and_says_where_it_runs(tmp_path):
    if vllm_backend.vllm_available():
        pytest.skip("vLLM is installed here: the GPU comparison below applies")
    with pytest.raises(vllm_backend.VllmUnavailable, match="GPU image"):
        vllm_backend.VllmScorer(tmp_path, tmp_path)


@pytest.mark.skipif(not vllm_backend.vllm_available(), reason="vLLM runs in the GPU image only (never in CPU CI)")
def test_vllm_matches_the_pytorch_scorer_on_gpu(tiny_llama_dir, tmp_path):  # pragma: no cover - GPU only
    import numpy as np

    from lang1ops.scorer import MultitaskScorer, load_model
    from lang1ops.tasks import DEFAULT_CONTRACT
    from training.artifacts import zero_shot_artifact

    artifact = zero_shot_artifact(tiny_llama_dir, tmp_path / "a", DEFAULT_CONTRACT, 64)
    notes = ["CC: chest pain. HPI: 70 yo M with CHF.", "Elective knee replacement, no comorbidities."]
    hf = MultitaskScorer(load_model(artifact, dtype="float32")).score_notes(notes)
    vl = vllm_backend.VllmScorer(tiny_llama_dir, artifact, gpu_memory_utilization=0.3).score_notes(notes)
    for a, b in zip(hf, vl, strict=True):
        for task in DEFAULT_CONTRACT.names:
            np.testing.assert_allclose(a.probabilities[task], b.probabilities[task], atol=2e-2)  # bf16 vs fp32
