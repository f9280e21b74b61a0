"""Token-level prompts of the task contract, and the naive reference scorer.

A prompt is `note tokens + suffix tokens`: the clinical note, right-truncated to
`max_note_tokens`, followed by the task's question, options and "Answer:". The answer is
read from the next-token distribution restricted to the option tokens (" A", " B", ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lang1ops.tasks import DEFAULT_CONTRACT, TaskContract, TaskSpec

# Fictitious; for smoke tests and demos only. Written like an admission H&P so that
# zero-shot answers on it are at least on in-distribution text.
SAMPLE_ADMISSION_NOTE = """\
ADMISSION HISTORY AND PHYSICAL (FICTITIOUS SAMPLE - NOT A REAL PATIENT)
Chief complaint: shortness of breath for three days.
HPI: 78-year-old woman with HFrEF (EF 30%), CKD stage 3b, type 2 diabetes and atrial \
fibrillation on apixaban presents with worsening dyspnea on exertion, orthopnea and 4 kg \
weight gain over one week after running out of furosemide. Denies chest pain or fever.
PMH: HFrEF, CKD 3b, T2DM, AF, COPD, prior NSTEMI (2019).
Medications: metoprolol succinate 50 mg daily, apixaban 5 mg BID, insulin glargine 20 units \
nightly, tiotropium inhaler.
Social: lives alone, former smoker (40 pack-years), no alcohol.
Exam: BP 148/86, HR 104 irregular, RR 24, SpO2 89% on room air. JVP elevated to the jaw, \
bibasilar crackles, 2+ pitting edema to the knees.
Labs: BNP 2450, creatinine 2.1 (baseline 1.6), potassium 5.2, troponin 0.04, glucose 212.
CXR: cardiomegaly, bilateral pleural effusions, pulmonary vascular congestion.
Assessment and plan: acute on chronic systolic heart failure exacerbation with AKI. Admit \
to telemetry, IV furosemide 80 mg BID, strict intake and output, daily weights, continue \
beta blocker, hold metformin, cardiology consult.
"""


@dataclass(frozen=True)
class NoteEncoding:
    ids: list[int]  # leading special tokens + note tokens after truncation
    note_tokens: int  # note tokens before truncation (special tokens not counted)
    kept_tokens: int  # note tokens kept

    @property
    def truncated(self) -> bool:
        return self.kept_tokens < self.note_tokens


class PromptEncoder:
    """Turns (note, task) into the token ids the model scores.

    The note and the question suffix are tokenized separately, never as one string: the
    note's tokens are then identical for every task, so serving can encode a note once and
    branch the five questions off its cached keys/values. (Joint tokenization could merge
    tokens across the note/suffix boundary and make the note's tokens depend on the task.)
    Training must use this encoder too, so the model sees exactly the serving tokens.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        contract: TaskContract = DEFAULT_CONTRACT,
        max_note_tokens: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.contract = contract
        self.max_note_tokens = contract.max_note_tokens if max_note_tokens is None else max_note_tokens
        if self.max_note_tokens < 1:
            raise ValueError(f"max_note_tokens must be positive, got {self.max_note_tokens}")
        self.prefix_ids = self._leading_special_ids()
        self._suffix_cache: dict[str, list[int]] = {}
        self._option_cache: dict[str, list[int]] = {}

    def _leading_special_ids(self) -> list[int]:
        """The special tokens the tokenizer puts before a text (BOS for Llama, none for SmolLM2).

        Special tokens after a text (an EOS some tokenizers append) are dropped: the
        question follows the note, and an EOS there would tell the model the text ended.
        """
        probe = "x"
        with_special = self.tokenizer(probe, add_special_tokens=True)["input_ids"]
        plain = self.tokenizer(probe, add_special_tokens=False)["input_ids"]
        for start in range(len(with_special) - len(plain) + 1):
            if with_special[start : start + len(plain)] == plain:
                return with_special[:start]
        raise ValueError(f"cannot locate the text among {self._name}'s special tokens")

    @property
    def _name(self) -> str:
        return self.tokenizer.name_or_path or type(self.tokenizer).__name__

    def _task(self, task: TaskSpec | str) -> TaskSpec:
        return self.contract.task(task) if isinstance(task, str) else task

    def note_encoding(self, text: str) -> NoteEncoding:
        # verbose=False: a note longer than the model's context is expected here, it is cut below.
        note_ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        kept = note_ids[: self.max_note_tokens]
        return NoteEncoding(ids=self.prefix_ids + kept, note_tokens=len(note_ids), kept_tokens=len(kept))

    def encode_note(self, text: str) -> list[int]:
        return self.note_encoding(text).ids

    def note_was_truncated(self, text: str) -> bool:
        return self.note_encoding(text).truncated

    def suffix_ids(self, task: TaskSpec | str) -> list[int]:
        spec = self._task(task)
        if spec.name not in self._suffix_cache:
            suffix = self.contract.question_suffix(spec)
            self._suffix_cache[spec.name] = self._after_text_ids(suffix)
        return list(self._suffix_cache[spec.name])

    def _after_text_ids(self, text: str) -> list[int]:
        """`text`'s tokens as they follow a note, not as a text of its own. A SentencePiece
        tokenizer with a dummy prefix (Llama-2's, so Lang1's) starts every text it tokenizes
        alone with a lone '▁' token, which the whole prompt tokenized at once does not have
        after the note; tokenizing an anchor word with and without `text` and keeping the
        difference gives the tokens the paper's jointly tokenized prompt has."""
        anchor = self.tokenizer("note", add_special_tokens=False)["input_ids"]
        joined = self.tokenizer("note" + text, add_special_tokens=False)["input_ids"]
        if joined[: len(anchor)] == anchor:
            return joined[len(anchor) :]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]  # merged across: tokens alone

    def option_token_ids(self, task: TaskSpec | str) -> list[int]:
        """One token id per option, in option order; the answer is read from these logits."""
        spec = self._task(task)
        if spec.name not in self._option_cache:
            ids = []
            for letter, answer in zip(spec.letters, self.contract.answer_tokens(spec), strict=True):
                encoded = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
                if len(encoded) != 1:
                    raise ValueError(
                        f"tokenizer {self._name} encodes the answer for option {letter} ({answer!r}) as "
                        f"{len(encoded)} tokens {encoded}; option answers must be single tokens"
                    )
                ids.append(encoded[0])
            self._option_cache[spec.name] = ids
        return list(self._option_cache[spec.name])

    def prompt_ids(self, note_text: str, task: TaskSpec | str) -> list[int]:
        return self.encode_note(note_text) + self.suffix_ids(task)


def score_naive(
    model: PreTrainedModel, encoder: PromptEncoder, note_text: str, tasks: list[str]
) -> dict[str, np.ndarray]:
    """Class probabilities per task, one full forward pass per task.

    The straightforward scorer: the reference every faster scorer must match, and the
    baseline of the benchmarks. Returns {task name: probabilities over its options}.
    """
    probabilities = {}
    with torch.inference_mode():
        for name in tasks:
            ids = torch.tensor([encoder.prompt_ids(note_text, name)], device=model.device)  # [1, seq]
            next_token_logits = model(input_ids=ids, use_cache=False).logits[0, -1]  # [vocab]
            option_logits = next_token_logits[encoder.option_token_ids(name)].double()  # [n_options]
            probabilities[name] = torch.softmax(option_logits, dim=0).cpu().numpy()
    return probabilities
