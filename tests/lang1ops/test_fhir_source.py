"""lang1ops.fhir_source: Bulk Data exports, ndjson and Bundles from disk, problems recorded."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from lang1ops.fhir_source import BUNDLE_TYPES, Problem, ProblemLog, iter_resources, load_manifest

SECRET = "Zebulon Quackenbush MRN 99812345"


def patient(pid: str) -> dict:
    return {"resourceType": "Patient", "id": pid}


def ndjson(path: Path, *lines: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def write_json(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def bundle(bundle_type: str, *resources: dict, bid: str = "b") -> dict:
    return {
        "resourceType": "Bundle",
        "id": bid,
        "type": bundle_type,
        "entry": [{"resource": r} for r in resources],
    }


def read(path: Path) -> tuple[list[tuple[str, str]], ProblemLog]:
    problems = ProblemLog()
    found = [(resource["id"], location) for resource, location in iter_resources(path, problems)]
    return found, problems


# --- Bulk Data exports -------------------------------------------------------------------------


def test_manifest_with_relative_file_url_and_name_entries(tmp_path):
    ndjson(tmp_path / "out" / "Patient.ndjson", patient("p1"), patient("p2"))
    ndjson(tmp_path / "Encounter.ndjson.gz", {"resourceType": "Encounter", "id": "e1"})
    ndjson(tmp_path / "elsewhere" / "Observation.ndjson", {"resourceType": "Observation", "id": "o1"})
    ndjson(tmp_path / "Unlisted.ndjson", patient("not-listed"))
    write_json(
        tmp_path / "manifest.json",
        {
            "transactionTime": "2024-01-01T00:00:00Z",
            "request": "https://ehr.example/fhir/$export",
            "requiresAccessToken": True,
            "output": [
                {"type": "Patient", "url": "out/Patient.ndjson", "count": 2},
                {"type": "Encounter", "url": "Encounter.ndjson.gz"},
                {"type": "Observation", "url": (tmp_path / "elsewhere" / "Observation.ndjson").as_uri()},
                {"type": "Condition", "url": "Condition.ndjson"},
            ],
            "error": [],
        },
    )
    found, problems = read(tmp_path)
    assert found == [
        ("p1", "out/Patient.ndjson:1"),
        ("p2", "out/Patient.ndjson:2"),
        ("e1", "Encounter.ndjson.gz:1"),
        ("o1", "elsewhere/Observation.ndjson:1"),
    ]
    assert problems.counts() == {"missing-file": 1}
    [missing] = problems.examples("missing-file")
    assert (missing.location, missing.resource_type) == ("Condition.ndjson", "Condition")


def test_manifest_http_url_is_looked_up_next_to_the_manifest(tmp_path):
    ndjson(tmp_path / "file_1", patient("p1"))  # export files need not be named *.ndjson
    write_json(
        tmp_path / "manifest.json", {"output": [{"type": "Patient", "url": "https://ehr/bulk/x/file_1"}]}
    )
    assert read(tmp_path)[0] == [("p1", "file_1:1")]
    assert read(tmp_path / "manifest.json")[0] == [("p1", "file_1:1")]


def test_manifest_error_files_become_problems(tmp_path):
    ndjson(tmp_path / "Patient.ndjson", patient("p1"))
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]}
    ndjson(tmp_path / "errors.ndjson", outcome)
    write_json(
        tmp_path / "manifest.json",
        {"output": [{"type": "Patient", "url": "Patient.ndjson"}], "error": [{"url": "errors.ndjson"}]},
    )
    found, problems = read(tmp_path)
    assert found == [("p1", "Patient.ndjson:1")]
    assert problems.counts() == {"export-error": 1}
    assert problems.examples("export-error")[0].detail == "issue codes: processing"


def test_broken_manifest_is_recorded_and_the_directory_still_read(tmp_path):
    ndjson(tmp_path / "Patient.ndjson", patient("p1"))
    (tmp_path / "manifest.json").write_text("{not json")
    found, problems = read(tmp_path)
    assert found == [("p1", "Patient.ndjson:1")]
    assert problems.counts() == {"invalid-manifest": 1}


def test_load_manifest(tmp_path):
    assert load_manifest(tmp_path) is None
    write_json(tmp_path / "manifest.json", {"output": []})
    assert load_manifest(tmp_path) == {"output": []}
    write_json(tmp_path / "manifest.json", {"outputs": []})
    with pytest.raises(ValueError):
        load_manifest(tmp_path)


# --- ndjson ------------------------------------------------------------------------------------


def test_bad_ndjson_lines_are_recorded_and_skipped(tmp_path):
    ndjson(
        tmp_path / "Mixed.ndjson",
        patient("p1"),
        "",
        '{"resourceType": "Patient", "id": "p2", "name": "' + SECRET,  # truncated: malformed
        json.dumps([patient("p3")]),
        json.dumps({"id": "p4", "note": SECRET}),
        json.dumps({"resourceType": 7, "id": "p5"}),
        patient("p6"),
    )
    found, problems = read(tmp_path)
    assert found == [("p1", "Mixed.ndjson:1"), ("p6", "Mixed.ndjson:7")]
    assert problems.counts() == {"malformed-json": 1, "no-resource-type": 2, "not-a-resource": 1}
    assert [p.location for p in problems.examples("no-resource-type")] == ["Mixed.ndjson:5", "Mixed.ndjson:6"]
    assert problems.examples("no-resource-type")[0].resource_id == "p4"
    assert problems.examples("malformed-json")[0].location == "Mixed.ndjson:3"
    assert SECRET not in json.dumps(problems.to_dict())


def test_gzip_ndjson_and_undecodable_line(tmp_path):
    ndjson(tmp_path / "Patient.ndjson.gz", patient("p1"), patient("p2"))
    (tmp_path / "Bad.ndjson").write_bytes(
        b'{"resourceType": "Patient", "id": "\xff"}\n' + json.dumps(patient("p3")).encode()
    )
    found, problems = read(tmp_path)
    assert found == [("p3", "Bad.ndjson:2"), ("p1", "Patient.ndjson.gz:1"), ("p2", "Patient.ndjson.gz:2")]
    assert problems.counts() == {"malformed-json": 1}


def test_corrupt_gzip_is_an_unreadable_file(tmp_path):
    (tmp_path / "Patient.ndjson.gz").write_bytes(
        gzip.compress(b'{"resourceType": "Patient", "id": "p1"}\n')[:-12]
    )
    _, problems = read(tmp_path)
    assert problems.counts() == {"unreadable-file": 1}


# --- Bundles and single resources --------------------------------------------------------------


@pytest.mark.parametrize("bundle_type", sorted(BUNDLE_TYPES))
def test_supported_bundle_types_yield_every_entry(tmp_path, bundle_type):
    write_json(tmp_path / "b.json", bundle(bundle_type, patient("p1"), patient("p2")))
    found, problems = read(tmp_path / "b.json")
    assert found == [("p1", "b.json#entry[0]"), ("p2", "b.json#entry[1]")]
    assert len(problems) == 0


def test_unsupported_bundle_type_and_entries_without_resource(tmp_path):
    write_json(tmp_path / "bundles" / "a.json", bundle("transaction-response", patient("p1"), bid="tr"))
    history = bundle("history", patient("p2"))
    history["entry"].append({"request": {"method": "DELETE", "url": "Patient/p3"}})
    write_json(tmp_path / "bundles" / "b.json", history)
    found, problems = read(tmp_path)
    assert found == [("p2", "bundles/b.json#entry[0]")]
    assert problems.counts() == {"entry-without-resource": 1, "unsupported-bundle-type": 1}
    unsupported = problems.examples("unsupported-bundle-type")[0]
    assert (unsupported.location, unsupported.resource_type, unsupported.resource_id) == (
        "bundles/a.json",
        "Bundle",
        "tr",
    )
    assert problems.examples("entry-without-resource")[0].detail == "request method DELETE"


def test_nested_bundle_and_bad_entries(tmp_path):
    document = bundle("document", {"resourceType": "Composition", "id": "c1"})
    outer = bundle("searchset", document, {"id": "x"})
    outer["entry"].append({"resource": "a string"})
    write_json(tmp_path / "s.json", outer)
    found, problems = read(tmp_path)
    assert found == [("c1", "s.json#entry[0].entry[0]")]
    assert problems.counts() == {"no-resource-type": 1, "not-a-resource": 1}


def test_single_resource_json_file_and_malformed_json_file(tmp_path):
    write_json(tmp_path / "one.json", {"resourceType": "DocumentReference", "id": "d1"})
    (tmp_path / "two.json").write_text('{"resourceType": "Patient", ' + SECRET)
    write_json(tmp_path / "three.json", [1, 2])
    found, problems = read(tmp_path)
    assert found == [("d1", "one.json")]
    assert problems.counts() == {"malformed-json": 1, "not-a-resource": 1}
    assert read(tmp_path / "one.json")[0] == [("d1", "one.json")]


# --- walking, problems -------------------------------------------------------------------------


def test_directories_are_walked_recursively_in_sorted_order(tmp_path):
    ndjson(tmp_path / "b" / "Z.ndjson", patient("bz"))
    ndjson(tmp_path / "b" / "A.ndjson", patient("ba"))
    write_json(tmp_path / "a.json", patient("a"))
    ndjson(tmp_path / "c.ndjson", patient("c"))
    ndjson(tmp_path / ".hidden" / "H.ndjson", patient("hidden"))
    (tmp_path / "README.txt").write_text("not data")
    export = tmp_path / "d_export"
    ndjson(export / "Patient.ndjson", patient("d"))
    write_json(export / "manifest.json", {"output": [{"type": "Patient", "url": "Patient.ndjson"}]})
    first, problems = read(tmp_path)
    assert [pid for pid, _ in first] == ["a", "ba", "bz", "c", "d"]
    assert read(tmp_path)[0] == first
    assert len(problems) == 0


def test_missing_path_is_a_problem(tmp_path):
    found, problems = read(tmp_path / "nope")
    assert found == [] and problems.counts() == {"missing-file": 1}


def test_problem_log_counts_examples_and_serialises():
    log = ProblemLog(max_examples=2)
    for i in range(3):
        log.add(Problem("malformed-json", f"f.ndjson:{i + 1}", detail="Expecting value"))
    log.add(Problem("invalid-resource", "g.ndjson:1", "Patient", "p1"))
    assert len(log) == 4
    assert log.counts() == {"invalid-resource": 1, "malformed-json": 3}
    assert [p.location for p in log.examples("malformed-json")] == ["f.ndjson:1", "f.ndjson:2"]
    assert log.examples("malformed-json", limit=1) == [
        Problem("malformed-json", "f.ndjson:1", detail="Expecting value")
    ]
    assert log.examples("unknown") == []
    restored = json.loads(json.dumps(log.to_dict()))
    assert restored["counts"] == {"invalid-resource": 1, "malformed-json": 3}
    assert restored["examples"]["invalid-resource"] == [
        {
            "reason": "invalid-resource",
            "location": "g.ndjson:1",
            "resource_type": "Patient",
            "resource_id": "p1",
            "detail": "",
        }
    ]
