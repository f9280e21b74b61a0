"""The Bulk Data client against a spec-following test server (tests/integration/bulk_server.py)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from integration.bulk_export import (
    BulkExportClient,
    BulkExportError,
    BulkExportTimeout,
    fhir_instant,
    retry_after_seconds,
)
from lang1ops.fhir_source import ProblemLog, iter_resources
from lang1ops.settings.bulk import BulkExportSettings
from tests.integration.bulk_server import BulkServer

SINCE = datetime(2024, 1, 1, tzinfo=UTC)
OLD = "2023-06-01T00:00:00Z"


def stamp_last_updated(source: Path, out: Path) -> Path:
    """A copy of `source` whose notes were last updated at their date and everything else in 2023."""
    out.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*.ndjson"):
        lines = []
        for line in path.read_text().splitlines():
            r = json.loads(line)
            r.setdefault("meta", {})["lastUpdated"] = r["date"] if r["resourceType"] == "DocumentReference" else OLD
            lines.append(json.dumps(r))
        (out / path.name).write_text("\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Path:
    from lang1ops.synthetic import HospitalSpec, generate_hospital

    raw = tmp_path_factory.mktemp("bulk_hospital") / "raw"
    generate_hospital(HospitalSpec(name="Bulk Test", patients=12, seed=5, start=date(2023, 1, 1),
                                   end=date(2024, 12, 31)), raw)
    return stamp_last_updated(raw, raw.parent / "served")


def lines_of(directory: Path, kind: str) -> list[dict]:
    return [json.loads(x) for x in (directory / f"{kind}.ndjson").read_text().splitlines() if x.strip()]


def fast(**overrides) -> BulkExportSettings:
    return BulkExportSettings(**({"poll_min_s": 0.05, "poll_max_s": 5, "timeout_s": 30} | overrides))


def test_system_export_end_to_end_polls_with_retry_after_and_reads_as_an_export(hospital, tmp_path):
    progress: list[str] = []
    with BulkServer(hospital, polls_before_ready=2, retry_after="1") as server, \
            BulkExportClient(server.base, fast(), on_progress=progress.append) as client:
        result = client.export(tmp_path / "export")
        polls = server.polls()
        assert server.deleted and not server.jobs  # released after download
    kick = next(h for _, m, p, h in server.requests if p.endswith("$export"))
    assert kick["prefer"] == "respond-async" and kick["accept"] == "application/fhir+json"
    # two 202s with Retry-After: 1, then the manifest: the client waited about a second each time
    assert result.polls == 3 and len(polls) == 3
    assert all(later - earlier >= 0.9 for earlier, later in zip(polls, polls[1:], strict=False))
    assert progress and all(p.endswith("% done") for p in progress)
    assert result.transaction_time == datetime(2025, 1, 1, tzinfo=UTC)
    by_type = {f.type: f for f in result.output}
    for kind in ("Patient", "Encounter", "DocumentReference", "Organization"):
        assert by_type[kind].lines == by_type[kind].count == len(lines_of(hospital, kind))
    # the local manifest makes the directory an export fhir_source reads, resource for resource
    problems = ProblemLog()
    downloaded = [r for r, _ in iter_resources(result.directory, problems)]
    expected = sum(len(lines_of(hospital, p.stem)) for p in hospital.glob("*.ndjson"))
    assert len(downloaded) == expected and len(problems) == 0
    manifest = json.loads((result.directory / "manifest.json").read_text())
    assert manifest["transactionTime"] == "2025-01-01T00:00:00Z"
    assert all(not item["url"].startswith("http") and item["sourceUrl"].startswith(server.base)
               for item in manifest["output"])


def test_type_and_since_narrow_the_export(hospital, tmp_path):
    with BulkServer(hospital, polls_before_ready=0) as server, BulkExportClient(server.base, fast()) as client:
        result = client.export(tmp_path / "export", types=["DocumentReference", "Patient"], since=SINCE)
    kick = next(p for _, m, p, h in server.requests if p.endswith("$export"))
    assert kick.endswith("/fhir/$export")
    # Patients were last updated in 2023 (before _since): only the notes written after it remain
    assert [f.type for f in result.output] == ["DocumentReference"]
    expected = [r["id"] for r in lines_of(hospital, "DocumentReference") if r["date"] > "2024-01-01T00:00:00Z"]
    got = [r["id"] for r in lines_of(result.directory, "0000-DocumentReference")]
    assert got == expected and 0 < len(got) < len(lines_of(hospital, "DocumentReference"))


def test_patient_and_group_level_exports(hospital, tmp_path):
    patient_ids = [p["id"] for p in lines_of(hospital, "Patient")]
    with BulkServer(hospital, polls_before_ready=0, groups={"cohort": {patient_ids[0]}}) as server, \
            BulkExportClient(server.base, fast()) as client:
        patient_level = client.export(tmp_path / "patients", level="patient")
        group = client.export(tmp_path / "group", level="group", group_id="cohort", types=["Encounter", "Patient"])
        with pytest.raises(BulkExportError) as missing:
            client.export(tmp_path / "nope", level="group", group_id="unknown")
    assert "Organization" not in {f.type for f in patient_level.output}
    assert {f.type for f in group.output} == {"Encounter", "Patient"}
    encounters = [json.loads(x) for x in group.output[0].path.read_text().splitlines()] + \
                 [json.loads(x) for x in group.output[1].path.read_text().splitlines()]
    assert all(patient_ids[0] in json.dumps(r) for r in encounters)
    assert missing.value.status == 404 and "not-found" in str(missing.value)


def test_kick_off_and_export_failures_surface_the_operation_outcome(hospital, tmp_path):
    with BulkServer(hospital, mode="kickoff-error") as server, BulkExportClient(server.base, fast()) as client:
        with pytest.raises(BulkExportError) as kick:
            client.export(tmp_path / "a")
    assert kick.value.status == 500 and kick.value.outcome["issue"][0]["code"] == "exception"
    assert "could not be started" in str(kick.value)
    with BulkServer(hospital, mode="status-error") as server, BulkExportClient(server.base, fast()) as client:
        with pytest.raises(BulkExportError) as status:
            client.export(tmp_path / "b")
    assert status.value.status == 500 and "disk full" in str(status.value)
    # a bad _since is refused by the server with 400 and an OperationOutcome
    with BulkServer(hospital) as server, BulkExportClient(server.base, fast()) as client:
        response = httpx.get(f"{server.base}/$export", params={"_since": "yesterday"},
                             headers={"Prefer": "respond-async", "Accept": "application/fhir+json"})
        assert response.status_code == 400 and response.json()["resourceType"] == "OperationOutcome"
        with pytest.raises(ValueError):
            client.kick_off(since=datetime(2024, 1, 1))  # naive: refused before sending anything


def test_transient_status_error_is_retried_and_error_files_are_kept(hospital, tmp_path):
    with BulkServer(hospital, mode="transient", polls_before_ready=0) as server, \
            BulkExportClient(server.base, fast()) as client:
        result = client.export(tmp_path / "t", types=["Patient"])
    assert result.polls == 2 and [f.type for f in result.output] == ["Patient"]
    with BulkServer(hospital, mode="error-file", polls_before_ready=0) as server, \
            BulkExportClient(server.base, fast()) as client:
        result = client.export(tmp_path / "e", types=["Patient"])
    assert len(result.errors) == 1 and result.errors[0].lines == 1
    problems = ProblemLog()
    patients = list(iter_resources(result.directory, problems))
    assert len(patients) == len(lines_of(hospital, "Patient"))
    assert problems.counts() == {"export-error": 1}  # the server's OperationOutcome, recorded not lost


def test_overall_timeout_cancels_the_export(hospital, tmp_path):
    with BulkServer(hospital, mode="never", retry_after="1") as server, \
            BulkExportClient(server.base, fast(timeout_s=2.5)) as client:
        with pytest.raises(BulkExportTimeout) as timeout:
            client.export(tmp_path / "x")
        assert server.deleted  # cancelled with DELETE
    assert "cancelled" in str(timeout.value)
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_retry_after_is_capped_and_http_dates_are_understood(hospital, tmp_path):
    now = datetime.now(UTC)
    assert retry_after_seconds("7") == 7
    assert 29 <= retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True)) <= 31
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    assert fhir_instant(datetime(2024, 5, 1, 12, tzinfo=UTC)) == "2024-05-01T12:00:00Z"
    waits: list[float] = []
    in_a_minute = format_datetime(now + timedelta(seconds=60), usegmt=True)
    with BulkServer(hospital, polls_before_ready=1, retry_after=in_a_minute) as server, \
            BulkExportClient(server.base, fast(poll_max_s=0.2), sleep=waits.append) as client:
        client.export(tmp_path / "cap", types=["Patient"])
    assert waits == [0.2]  # asked for a minute, capped at poll_max_s


def test_bearer_auth_is_sent_and_files_get_it_only_when_required(hospital, tmp_path):
    class Bearer(httpx.Auth):
        def auth_flow(self, request):
            request.headers["Authorization"] = "Bearer t0k"
            yield request

    with BulkServer(hospital, polls_before_ready=0, token="t0k", requires_access_token=True) as server, \
            BulkExportClient(server.base, fast(), auth=Bearer()) as client:
        result = client.export(tmp_path / "auth", types=["Patient"])
    assert result.output[0].lines == len(lines_of(hospital, "Patient"))
    with BulkServer(hospital, polls_before_ready=0, token="t0k") as server, \
            BulkExportClient(server.base, fast()) as client:
        with pytest.raises(BulkExportError) as refused:
            client.export(tmp_path / "noauth")
    assert refused.value.status == 401
    # requiresAccessToken false: the token stays off file downloads (they may be on another host)
    with BulkServer(hospital, polls_before_ready=0) as server, \
            BulkExportClient(server.base, fast(), auth=Bearer()) as client:
        client.export(tmp_path / "files", types=["Patient"])
    file_requests = [h for _, m, p, h in server.requests if "/_files/" in p]
    api_requests = [h for _, m, p, h in server.requests if "/_files/" not in p]
    assert file_requests and all("authorization" not in h for h in file_requests)
    assert all(h.get("authorization") == "Bearer t0k" for h in api_requests)
