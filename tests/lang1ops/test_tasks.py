"""The task contract: defined once, round-trips through JSON, matches the paper's prompts."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from lang1ops.tasks import DEFAULT_CONTRACT, NoteType, TaskContract, load_contract


def test_json_round_trip_is_lossless(tmp_path):
    text = DEFAULT_CONTRACT.to_json()
    assert TaskContract.from_json(text) == DEFAULT_CONTRACT
    DEFAULT_CONTRACT.save(tmp_path / "contract.json")
    assert load_contract(tmp_path / "contract.json") == DEFAULT_CONTRACT
    # plain JSON: no Infinity/NaN, so any JSON reader (and a model artifact) can carry it
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_five_tasks_with_the_papers_note_types_and_horizons():
    assert DEFAULT_CONTRACT.names == ["readmission", "mortality", "los", "cci", "denial"]
    assert [t.name for t in DEFAULT_CONTRACT.tasks_for(NoteType.DISCHARGE_SUMMARY)] == ["readmission"]
    assert [t.name for t in DEFAULT_CONTRACT.tasks_for("admission_hp")] == ["mortality", "los", "cci", "denial"]
    assert DEFAULT_CONTRACT.task("readmission").horizon_days == 30
    assert DEFAULT_CONTRACT.note_type_of_loinc("18842-5") == NoteType.DISCHARGE_SUMMARY
    assert DEFAULT_CONTRACT.note_type_of_loinc("34117-2") == NoteType.ADMISSION_HP
    assert DEFAULT_CONTRACT.note_type_of_loinc("11506-3") is None  # a progress note


def test_prompt_suffix_is_appendix_h():
    assert DEFAULT_CONTRACT.question_suffix("readmission") == (
        "\nQuestion: Given the above discharge note of the patient, will the patient be readmitted to the hospital "
        "within 30 days of discharge?\nA. no\nB. yes\nAnswer:")
    assert DEFAULT_CONTRACT.question_suffix("los").endswith(
        "\nA. 0 to 2 days\nB. 3 days\nC. 4 to 5 days\nD. more than 5 days\nAnswer:")
    assert DEFAULT_CONTRACT.answer_tokens("cci") == [" A", " B", " C", " D", " E"]


@pytest.mark.parametrize("task, value, expected", [
    ("los", 0, 0), ("los", 2, 0), ("los", 3, 1), ("los", 4, 2), ("los", 5, 2), ("los", 6, 3), ("los", 40, 3),
    ("cci", 0, 0), ("cci", 1, 1), ("cci", 2, 1), ("cci", 3, 2), ("cci", 4, 2), ("cci", 5, 3), ("cci", 7, 3), ("cci", 8, 4),
])
def test_bins(task, value, expected):
    assert DEFAULT_CONTRACT.task(task).bin_index(value) == expected


def test_binary_tasks_are_not_binned_and_every_class_has_a_fhir_coding():
    with pytest.raises(ValueError, match="not binned"):
        DEFAULT_CONTRACT.task("mortality").bin_index(1)
    for task in DEFAULT_CONTRACT.tasks:
        for option in task.options:
            assert option.codings and all(c.system and c.code and c.display for c in option.codings)
        assert len({o.codings[0].code for o in task.options}) == task.n_classes


def test_invalid_contracts_are_refused():
    data = json.loads(DEFAULT_CONTRACT.to_json())
    data["tasks"].append(data["tasks"][0])
    with pytest.raises(ValidationError, match="unique"):
        TaskContract.model_validate(data)
    data = json.loads(DEFAULT_CONTRACT.to_json())
    data["tasks"][0]["options"][1]["letter"] = "A"
    with pytest.raises(ValidationError, match="letters must be unique"):
        TaskContract.model_validate(data)
    with pytest.raises(KeyError, match="unknown task"):
        DEFAULT_CONTRACT.task("sepsis")
