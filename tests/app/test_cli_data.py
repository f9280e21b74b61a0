"""`lang1ops data generate | build | baseline` end to end on a small hospital."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from app.cli import app

runner = CliRunner()


def test_generate_build_and_baseline(tmp_path):
    fhir, dataset = tmp_path / "fhir", tmp_path / "dataset"
    result = runner.invoke(app, ["data", "generate", "--out", str(fhir), "--hospital", "CLI General", "--patients", "300",
                                 "--seed", "5", "--shift-from", "2024-01-01"])
    assert result.exit_code == 0, result.output
    assert "DocumentReference" in result.output and (fhir / "manifest.json").exists()
    result = runner.invoke(app, ["data", "build", "--fhir", str(fhir), "--out", str(dataset),
                                 "--train-window", "2019-01-01:2022-12-31", "--temporal", "2023-01-01:2023-12-31",
                                 "--temporal", "late=2024-01-01:2024-12-31"])
    assert result.exit_code == 0, result.output
    info = json.loads((dataset / "dataset.json").read_text())
    assert info["splits"] == ["train", "val", "test", "temporal_2023", "late"]
    assert info["tasks"]["mortality"]["train"]["n"] > 100
    for word in ("readmission", "temporal_2023", "late", "follow-up-incomplete"):
        assert word in result.output
    result = runner.invoke(app, ["data", "baseline", str(dataset)])
    assert result.exit_code == 0, result.output
    assert "TF-IDF" in result.output and "cci" in result.output


def test_bad_arguments_are_clear_errors(tmp_path):
    result = runner.invoke(app, ["data", "generate", "--out", str(tmp_path), "--start", "2024-13-01"])
    assert result.exit_code == 2 and "not an ISO date" in result.output
    result = runner.invoke(app, ["data", "build", "--fhir", str(tmp_path), "--out", str(tmp_path / "d"),
                                 "--train-window", "2022-01-01:2021-01-01"])
    assert result.exit_code == 2 and "end before start" in result.output


def test_an_export_with_nothing_to_label_fails_loudly_and_as_of_takes_an_offset(tmp_path):
    fhir = tmp_path / "fhir"
    fhir.mkdir()
    # only notes, no encounters: nothing can be labeled
    (fhir / "DocumentReference.ndjson").write_text(json.dumps({
        "resourceType": "DocumentReference", "id": "n1", "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2"}]}, "subject": {"reference": "Patient/p"},
        "content": [{"attachment": {"contentType": "text/plain", "data": "SFBJOiBjb3VnaA=="}}]}) + "\n")
    args = ["data", "build", "--fhir", str(fhir), "--out", str(tmp_path / "d"), "--train-window", "2019-01-01:2022-12-31"]
    result = runner.invoke(app, [*args, "--as-of", "2024-12-31T23:59:59-05:00"])
    assert result.exit_code == 1, result.output
    assert "No labeled notes" in result.output and "no-encounter" in result.output and "--as-of" in result.output
    result = runner.invoke(app, [*args, "--as-of", "2024-12-31T23:59:59"])
    assert result.exit_code == 2 and "no offset" in result.output
