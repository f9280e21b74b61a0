"""The task contract: the five operational predictions, defined once.

A `TaskContract` says, for each task, which note type scores it, the paper's question and
options (appendix H), how a raw outcome becomes a class (label bins), how each class is
coded in FHIR, and over which horizon the prediction holds. It serialises to JSON and is
saved inside every model artifact, so serving reads the tasks from the model it loads.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field, model_validator

# Canonical URL of the code system for lang1-ops outcome classes (no standard terminology
# codes binned LOS or Charlson classes; SNOMED CT is added where a concept exists).
OUTCOME_SYSTEM = "http://lang1-ops.org/fhir/CodeSystem/operational-outcome"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"


class NoteType(StrEnum):
    DISCHARGE_SUMMARY = "discharge_summary"
    ADMISSION_HP = "admission_hp"


class Coding(BaseModel):
    system: str
    code: str
    display: str


class NoteTypeSpec(BaseModel):
    """How a FHIR document is recognised as this note type (DocumentReference.type etc.)."""

    name: NoteType
    display: str
    loinc: list[str] = Field(description="LOINC document codes that count as this note type.")


class TaskOption(BaseModel):
    letter: str = Field(description="Option letter the model answers with (A, B, ...).")
    text: str = Field(description="Option text exactly as in the prompt.")
    codings: list[Coding] = Field(description="FHIR codings of this outcome class.")
    low: float | None = Field(None, description="Inclusive lower bound of the bin (binned tasks only).")
    high: float | None = Field(None, description="Inclusive upper bound of the bin; none for the open top bin.")


class TaskSpec(BaseModel):
    name: str
    title: str
    note_type: NoteType
    question: str
    options: list[TaskOption]
    binary: bool = Field(description="Binary tasks report one probability, of the positive option.")
    positive_option: int | None = Field(None, description="Index of the event option for binary tasks.")
    outcome: Coding = Field(description="The outcome concept the task predicts.")
    horizon_days: int | None = Field(None, description="Prediction horizon after discharge, if any.")
    horizon: str = Field(description="The horizon in words, e.g. '30 days after discharge'.")
    unit: str | None = Field(None, description="Unit of the binned raw value ('d' for LOS).")

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        letters = [o.letter for o in self.options]
        if len(set(letters)) != len(letters) or len(letters) < 2:
            raise ValueError(f"task {self.name}: option letters must be unique and at least two")
        if self.binary != (self.positive_option is not None) or (self.binary and len(letters) != 2):
            raise ValueError(f"task {self.name}: binary tasks have two options and a positive_option")
        return self

    @property
    def n_classes(self) -> int:
        return len(self.options)

    @property
    def letters(self) -> list[str]:
        return [o.letter for o in self.options]

    def bin_index(self, value: float) -> int:
        """Class index of a raw outcome value (LOS in days, Charlson points)."""
        for i, option in enumerate(self.options):
            if option.low is None:
                raise ValueError(f"task {self.name} is not binned")
            if option.low <= value and (option.high is None or value <= option.high):
                return i
        raise ValueError(f"task {self.name}: value {value} falls in no bin")


class PromptFormat(BaseModel):
    """The multiple-choice layout of appendix H: note, question, options, 'Answer:'."""

    question_prefix: str = "\nQuestion: "
    option_line: str = "\n{letter}. {text}"
    answer_suffix: str = "\nAnswer:"
    # The model answers with the next token; Llama-family tokenizers spell the option as
    # " A" (a space and the letter), which is one token in SentencePiece and BPE vocabularies.
    answer_token_template: str = " {letter}"


class TaskContract(BaseModel):
    schema_version: int = 1
    max_note_tokens: int = 512
    prompt: PromptFormat = Field(default_factory=PromptFormat)
    note_types: list[NoteTypeSpec]
    tasks: list[TaskSpec]

    @model_validator(mode="after")
    def _unique(self) -> TaskContract:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique")
        return self

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(f"unknown task {name!r}; known: {', '.join(self.names)}")

    def tasks_for(self, note_type: NoteType | str) -> list[TaskSpec]:
        return [t for t in self.tasks if t.note_type == note_type]

    def note_type_of_loinc(self, code: str) -> NoteType | None:
        for spec in self.note_types:
            if code in spec.loinc:
                return spec.name
        return None

    def question_suffix(self, task: TaskSpec | str) -> str:
        """Everything after the note: question, options and 'Answer:'."""
        t = self.task(task) if isinstance(task, str) else task
        options = "".join(self.prompt.option_line.format(letter=o.letter, text=o.text) for o in t.options)
        return f"{self.prompt.question_prefix}{t.question}{options}{self.prompt.answer_suffix}"

    def answer_tokens(self, task: TaskSpec | str) -> list[str]:
        t = self.task(task) if isinstance(task, str) else task
        return [self.prompt.answer_token_template.format(letter=letter) for letter in t.letters]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> TaskContract:
        return cls.model_validate_json(text)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> TaskContract:
        return cls.from_json(Path(path).read_text())


def _code(code: str, display: str, snomed: tuple[str, str] | None = None) -> list[Coding]:
    codings = [Coding(system=OUTCOME_SYSTEM, code=code, display=display)]
    if snomed:
        codings.append(Coding(system=SNOMED, code=snomed[0], display=snomed[1]))
    return codings


def _yes_no(event_code: str, event_display: str, snomed: tuple[str, str] | None = None) -> list[TaskOption]:
    return [
        TaskOption(letter="A", text="no", codings=_code(f"no-{event_code}", f"No {event_display.lower()}")),
        TaskOption(letter="B", text="yes", codings=_code(event_code, event_display, snomed)),
    ]


def _binned(prefix: str, display: str, bins: list[tuple[str, int, int | None]]) -> list[TaskOption]:
    """Options for a binned outcome; `high=None` is the open top bin."""
    options = []
    for letter, (text, low, high) in zip("ABCDEFGH", bins, strict=False):
        if high is None:
            code, words = f"{prefix}-{low}-plus", f"{display} {low} or more"
        elif high == low:
            code, words = f"{prefix}-{low}", f"{display} {low}"
        else:
            code, words = f"{prefix}-{low}-{high}", f"{display} {low} to {high}"
        options.append(TaskOption(letter=letter, text=text, low=low, high=high, codings=_code(code, words)))
    return options

# The paper's prompts (appendix H), verbatim. Two quirks are kept on purpose so that
# checkpoints finetuned on these prompts score the same text: the denial question says
# "discharge note" although the task reads the admission H&P (methods 5.2.2), and CCI
# option D reads "score 4 to 7" although its bin is 5-7 (the bins below are the paper's).
DEFAULT_CONTRACT = TaskContract(
    note_types=[
        NoteTypeSpec(name=NoteType.DISCHARGE_SUMMARY, display="Discharge summary", loinc=["18842-5"]),
        NoteTypeSpec(
            name=NoteType.ADMISSION_HP,
            display="Admission history and physical note",
            loinc=["34117-2", "47039-3", "11492-6"],
        ),
    ],
    tasks=[
        TaskSpec(
            name="readmission",
            title="30-day all-cause readmission",
            note_type=NoteType.DISCHARGE_SUMMARY,
            question="Given the above discharge note of the patient, will the patient be readmitted "
            "to the hospital within 30 days of discharge?",
            options=_yes_no("readmission-30d", "Readmission within 30 days", ("417005", "Hospital re-admission")),
            binary=True,
            positive_option=1,
            outcome=Coding(system=OUTCOME_SYSTEM, code="readmission-30d", display="Readmission within 30 days"),
            horizon_days=30,
            horizon="30 days after discharge",
        ),
        TaskSpec(
            name="mortality",
            title="In-hospital mortality",
            note_type=NoteType.ADMISSION_HP,
            question="Given the above admission note of the patient, will the patient die during the "
            "hospital admission?",
            options=_yes_no("in-hospital-death", "In-hospital death", ("419099009", "Dead")),
            binary=True,
            positive_option=1,
            outcome=Coding(system=OUTCOME_SYSTEM, code="in-hospital-death", display="In-hospital death"),
            horizon="during this admission",
        ),
        TaskSpec(
            name="los",
            title="Length of stay",
            note_type=NoteType.ADMISSION_HP,
            question="Given the above admission note of the patient, how long will the patient stay at the hospital?",
            options=_binned(
                "los",
                "Length of stay, days:",
                [("0 to 2 days", 0, 2), ("3 days", 3, 3), ("4 to 5 days", 4, 5), ("more than 5 days", 6, None)],
            ),
            binary=False,
            outcome=Coding(system=OUTCOME_SYSTEM, code="length-of-stay", display="Length of stay"),
            horizon="this admission",
            unit="d",
        ),
        TaskSpec(
            name="cci",
            title="Charlson comorbidity index",
            note_type=NoteType.ADMISSION_HP,
            question="Given the above admission note of the patient, what's the Charlson Comorbidity Index of the patient?",
            options=_binned(
                "cci",
                "Charlson index",
                [
                    ("score 0", 0, 0),
                    ("score 1 to 2", 1, 2),
                    ("score 3 to 4", 3, 4),
                    ("score 4 to 7", 5, 7),
                    ("score more than 7", 8, None),
                ],
            ),
            binary=False,
            outcome=Coding(system=OUTCOME_SYSTEM, code="charlson-index", display="Charlson comorbidity index"),
            horizon="at admission",
            unit="{score}",
        ),
        TaskSpec(
            name="denial",
            title="Insurance claim denial",
            note_type=NoteType.ADMISSION_HP,
            question="Given the above discharge note of the patient, will the insurance claim of the patient be denied?",
            options=_yes_no("claim-denial", "Insurance claim denied"),
            binary=True,
            positive_option=1,
            outcome=Coding(system=OUTCOME_SYSTEM, code="claim-denial", display="Insurance claim denied"),
            horizon="claim for this admission",
        ),
    ],
)


def load_contract(path: Path | None = None) -> TaskContract:
    """The contract in `path` (a model artifact's), or the default five tasks."""
    return TaskContract.load(path) if path else DEFAULT_CONTRACT.model_copy(deep=True)


def contract_json_schema() -> str:
    return json.dumps(TaskContract.model_json_schema(), indent=2)
