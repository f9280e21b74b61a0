"""The synthetic hospital: determinism, valid FHIR, realistic prevalences, no leakage, a real shift."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from fhir.resources.R4B import get_fhir_model_class

from lang1ops.metrics import auroc
from lang1ops.synthetic import HospitalSpec, generate_hospital
from lang1ops.synthetic.notes import AMBIENT_DISCLAIMER
from lang1ops.tasks import DEFAULT_CONTRACT
from training.baselines import TfidfBaseline
from training.dataset import Dataset, DatasetSpec, Window, build_dataset


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_same_seed_gives_byte_identical_export_and_another_seed_does_not(tmp_path):
    spec = HospitalSpec(name="Det Hospital", patients=120, seed=3, shift_from=date(2024, 1, 1))
    generate_hospital(spec, tmp_path / "a")
    generate_hospital(spec, tmp_path / "b")
    generate_hospital(HospitalSpec(name="Det Hospital", patients=120, seed=4, shift_from=date(2024, 1, 1)), tmp_path / "c")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    differing = {k for k, v in digest(tmp_path / "a").items() if digest(tmp_path / "c")[k] != v}
    assert {"Patient.ndjson", "Encounter.ndjson", "DocumentReference.ndjson"} <= differing


def test_every_resource_is_valid_r4_and_the_manifest_lists_every_file(tmp_path):
    summary = generate_hospital(HospitalSpec(name="Valid", patients=80, seed=1, shift_from=date(2023, 1, 1)), tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["transactionTime"] == "2024-12-31T23:59:59Z"
    listed = {o["type"]: o for o in manifest["output"]}
    for kind, count in summary.resources.items():
        lines = (tmp_path / listed[kind]["url"]).read_text().splitlines()
        assert len(lines) == count == listed[kind]["count"]
        model = get_fhir_model_class(kind)
        for line in lines:
            model.model_validate_json(line)  # raises on any invalid resource


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Dataset:
    """A mid-sized hospital (about 6,000 stays) with the shift on from 2024, built into task data."""
    root = tmp_path_factory.mktemp("hospital")
    generate_hospital(HospitalSpec(name="Prevalence General", patients=2500, seed=11, shift_from=date(2024, 1, 1)),
                      root / "fhir")
    spec = DatasetSpec(Window.parse("2019-01-01:2022-12-31", "train"),
                       [Window.parse("2023-01-01:2023-12-31"), Window.parse("2024-01-01:2024-12-31")])
    build_dataset(root / "fhir", root / "dataset", spec)
    return Dataset.load(root / "dataset")


# Paper appendix B (training split) with tolerances that allow for a 2,500-patient hospital.
EXPECTED = {
    "readmission": [(1, 0.109, 0.035)],
    "mortality": [(1, 0.019, 0.01)],
    "los": [(0, 0.417, 0.06), (1, 0.177, 0.06), (2, 0.166, 0.05), (3, 0.240, 0.05)],
    "cci": [(0, 0.695, 0.05), (1, 0.225, 0.05), (2, 0.054, 0.03), (3, 0.025, 0.02), (4, 0.001, 0.012)],
    "denial": [(1, 0.122, 0.04)],
}


@pytest.mark.parametrize("task", list(EXPECTED))
def test_label_prevalence_is_close_to_the_paper(hospital, task):
    labels = hospital.labels[(hospital.labels["task"] == task) & hospital.labels["split"].isin(["train", "val", "test"])]
    assert len(labels) > 2000
    for label, expected, tolerance in EXPECTED[task]:
        share = float((labels["label"] == label).mean())
        assert abs(share - expected) <= tolerance, f"{task} class {label}: {share:.3f} vs paper {expected}"


def test_notes_look_like_notes(hospital):
    words = hospital.notes["n_words"]
    assert words.min() >= 300 and words.max() <= 1500
    hp = hospital.notes[hospital.notes["note_type"] == "admission_hp"]["text"]
    for section in ("Allergies", "Social", "Medications", "Family History"):
        assert hp.str.contains(section, case=False).mean() > 0.3, section
    assert hp.str.contains(r"Assessment|A/P|Impression", case=False).mean() > 0.95
    ds = hospital.notes[hospital.notes["note_type"] == "discharge_summary"]["text"]
    for section in ("Hospital course", "Discharge medications", "Follow-up"):
        assert ds.str.contains(section, case=False).mean() > 0.95, section
    # authors differ: several section-header styles and abbreviation habits occur
    assert hp.str.contains(r"^HPI:", flags=re.M).mean() > 0.1
    assert hp.str.contains(r"^HISTORY OF PRESENT ILLNESS", flags=re.M).mean() > 0.1
    assert hp.str.contains(r"\byo [MF]\b").mean() > 0.1 and hp.str.contains(r"year-old").mean() > 0.1


# Words that would answer the question if a note stated its own outcome.
ANSWER_WORDS = {
    "readmission": r"readmi|re-admi|return(?:ed)? to the hospital within",
    "mortality": r"\b(?:expired|died|death|deceased|passed away|autopsy|morgue)\b",
    "los": r"length of stay|\bLOS\b|discharged on (?:hospital )?day|hospital day \d+",
    "cci": r"charlson|comorbidity index|\bCCI\b",
    "denial": r"\bdenied\b|\bdenial\b|not covered|appeal",
}


@pytest.mark.parametrize("task", list(ANSWER_WORDS))
def test_a_keyword_search_for_the_answer_does_not_solve_the_task(hospital, task):
    frame = hospital.task_frame(task, "train")
    hit = frame["text"].str.contains(ANSWER_WORDS[task], case=False, regex=True).to_numpy()
    n_classes = DEFAULT_CONTRACT.task(task).n_classes
    for positive in range(1 if n_classes == 2 else 0, n_classes):
        y = (frame["label"].to_numpy() == positive).astype(int)
        if hit.all() or not hit.any():
            continue  # the words never (or always) occur: no information at all
        score = auroc(y, np.stack([1 - hit, hit], axis=1).astype(float))
        assert 0.4 <= score <= 0.6, f"{task}: the keyword flag has AUROC {score:.2f} for class {positive}"


def test_tfidf_baseline_auroc_is_in_the_papers_range_not_trivial(hospital):
    for task in DEFAULT_CONTRACT.tasks:
        train = hospital.task_frame(task.name, "train")
        test = hospital.task_frame(task.name, "temporal_2023")
        model = TfidfBaseline.fit(train["text"].tolist(), train["label"].to_numpy(), task.n_classes)
        score = auroc(test["label"].to_numpy(), model.predict_proba(test["text"].tolist()))
        assert 0.6 <= score <= 0.97, f"{task.name}: TF-IDF AUROC {score:.3f}"


def test_the_shift_brings_a_new_template_and_vocabulary(hospital):
    hp = hospital.notes[hospital.notes["note_type"] == "admission_hp"]
    before, after = hp[hp["window"] == "temporal_2023"]["text"], hp[hp["window"] == "temporal_2024"]["text"]
    new_template = AMBIENT_DISCLAIMER[:60]
    assert before.str.contains(new_template, regex=False).mean() == 0
    assert after.str.contains(new_template, regex=False).mean() > 0.7
    new_words = r"HFrEF|HFpEF|MASLD|sacubitril|empagliflozin|apixaban|tirzepatide|semaglutide|CKD G3a"
    assert after.str.contains(new_words).mean() > 3 * max(before.str.contains(new_words).mean(), 0.01)


def test_note_text_in_the_export_is_base64_utf8_text_plain(tmp_path):
    generate_hospital(HospitalSpec(name="B64", patients=20, seed=2), tmp_path)
    for line in (tmp_path / "DocumentReference.ndjson").read_text().splitlines():
        attachment = json.loads(line)["content"][0]["attachment"]
        assert attachment["contentType"].startswith("text/plain")
        assert base64.b64decode(attachment["data"]).decode("utf-8").strip()


def test_watching_the_outcome_draws_changes_no_byte_of_the_export(tmp_path):
    """bench/ceiling.py reruns the simulation with on_outcome to read each stay's latents: the
    hook sees every stay's draw and the export it would write is the same as without it."""
    from lang1ops.synthetic.generate import HospitalSimulation, NdjsonSink

    spec = HospitalSpec(name="Watched", patients=60, seed=5, shift_from=date(2024, 1, 1))
    generate_hospital(spec, tmp_path / "plain")
    seen: dict[str, object] = {}
    sink = NdjsonSink(tmp_path / "watched")
    HospitalSimulation(spec, sink, on_outcome=lambda stay, outcome: seen.setdefault(stay.id, outcome)).run()
    sink.close(spec)
    plain = {k: v for k, v in digest(tmp_path / "plain").items() if k != "generation.json"}
    assert digest(tmp_path / "watched") == plain
    encounters = [json.loads(line) for line in (tmp_path / "plain" / "Encounter.ndjson").read_text().splitlines()]
    # acute stays, not the rehabilitation stays that follow some discharges (no outcome is drawn for those)
    acute = {e["id"] for e in encounters if e["class"]["code"] == "IMP" and e["serviceType"]["text"] != "rehabilitation"}
    assert acute and acute <= seen.keys()
    died = {e["id"] for e in encounters if e.get("hospitalization", {}).get("dischargeDisposition", {}).get("coding", [{}])[0].get("code") == "exp"}
    assert all(seen[i].died for i in died)
    assert all(o.latents.mortality_full != o.latents.mortality_seen for o in seen.values())  # the hidden severity
