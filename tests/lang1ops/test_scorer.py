"""The one-pass scorer gives the same probabilities as five separate plain forward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lang1ops.base_model import load_causal_lm, load_tokenizer
from lang1ops.prompts import PromptEncoder, score_naive
from lang1ops.scorer import MultitaskScorer, choose_dtype, load_model
from lang1ops.tasks import DEFAULT_CONTRACT
from training.artifacts import zero_shot_artifact

NOTES = [
    "CC: shortness of breath. HPI: 78 yo F with CHF and CKD presents with dyspnea and leg swelling for 3 days. "
    "Exam: bibasilar crackles, 2+ edema. Labs: BNP 2400, Cr 1.9. A/P: IV furosemide, daily weights.",
    "Chief complaint: right knee pain. Admitted electively for total knee arthroplasty. No chronic illness.",
    "HPI: 54 yo M with alcohol use disorder, confusion for 2 days, asterixis, ascites. " * 30,  # longer than the cap
    "Brief note.",
]


@pytest.fixture(scope="module")
def zero_shot(tiny_llama_dir, tmp_path_factory):
    out = zero_shot_artifact(tiny_llama_dir, tmp_path_factory.mktemp("zs") / "artifact", DEFAULT_CONTRACT, max_note_tokens=48)
    return load_model(out, dtype="float32")


def test_one_pass_equals_separate_forward_passes_in_fp32(zero_shot, tiny_llama_dir):
    scorer = MultitaskScorer(zero_shot, max_batch_notes=3)
    results, pooled = scorer.score(NOTES)
    model = load_causal_lm(tiny_llama_dir)
    encoder = PromptEncoder(load_tokenizer(tiny_llama_dir), DEFAULT_CONTRACT, 48)
    for note, got in zip(NOTES, results, strict=True):
        expected = score_naive(model, encoder, note, DEFAULT_CONTRACT.names)
        for task in DEFAULT_CONTRACT.names:
            np.testing.assert_allclose(got[task], expected[task], atol=1e-4, rtol=0)
            assert got[task].sum() == pytest.approx(1.0)
    assert pooled.shape == (len(NOTES), model.config.hidden_size) and np.isfinite(pooled).all()


def test_each_note_gets_only_the_tasks_asked_and_order_is_kept(zero_shot):
    scorer = MultitaskScorer(zero_shot, max_batch_notes=2)
    asked = [["readmission"], ["mortality", "los"], ["cci"], ["readmission"]]
    results, _ = scorer.score(NOTES, asked)
    assert [sorted(r) for r in results] == [sorted(a) for a in asked]
    alone, _ = scorer.score([NOTES[1]], [["mortality", "los"]])
    np.testing.assert_allclose(results[1]["los"], alone[0]["los"], atol=1e-5)


def test_dtype_choice():
    assert choose_dtype("cpu", "float32") == torch.float32
    assert choose_dtype("cpu", "auto") in (torch.float32, torch.bfloat16)
