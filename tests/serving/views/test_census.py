"""The census table and its loader from FHIR Encounters (dicts, a synthetic Bulk export, the CLI)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from lang1ops.settings.views import ViewsSettings
from serving.store import Store
from serving.views.census import Census, stay_of_encounter
from serving.views.outreach import OutreachLog, OutreachStatus
from tests.postgres import postgres_url  # noqa: F401  (fixture)

CLASSES = ViewsSettings().inpatient_classes


def encounter(eid="e1", klass="IMP", start="2024-06-01T08:00:00Z", end=None, location="4 West Medicine", **extra):
    r = {"resourceType": "Encounter", "id": eid, "status": "finished" if end else "in-progress",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": klass},
         "subject": {"reference": "Patient/p1"}, "period": {"start": start} | ({"end": end} if end else {}),
         "serviceType": {"text": "medicine"}}
    if location:
        r["location"] = [{"location": {"reference": "Location/loc-icu", "display": "MICU"}, "status": "completed"},
                         {"location": {"reference": "Location/loc-4w", "display": location}, "status": "active"}]
    r.update(extra)
    return r


def test_unit_comes_from_the_active_location_then_service_type():
    assert stay_of_encounter(encounter(), CLASSES).unit == "4 West Medicine"
    assert stay_of_encounter(encounter(location=None), CLASSES).unit == "medicine"
    no_display = encounter(location=None, serviceType=None)
    no_display["location"] = [{"location": {"reference": "Location/loc-5e"}}]
    assert stay_of_encounter(no_display, CLASSES).unit == "loc-5e"


@pytest.mark.parametrize(("resource", "reason"), [
    (encounter(klass="AMB"), "not-inpatient"),
    (encounter(eid="bad id"), "invalid-id"),
    (encounter(subject={"reference": "Group/g"}), "no-subject"),
    (encounter(start="yesterday"), "no-admission-time"),
    (encounter(end="2024-05-01T00:00:00Z"), "discharge-before-admission"),
    (encounter(status="cancelled"), "not-admitted"),
])
def test_unusable_encounters_are_counted_by_reason(resource, reason, tmp_path):
    assert stay_of_encounter(resource, CLASSES) == reason
    census = Census(Store(f"sqlite:///{tmp_path / 's.sqlite'}").engine)
    report = census.load_encounters([resource, encounter(eid="ok")], CLASSES)
    assert report.loaded == 1 and report.skipped == {reason: 1}


def test_stays_as_of_a_time(tmp_path):
    census = Census(Store(f"sqlite:///{tmp_path / 's.sqlite'}").engine)
    census.load_encounters([
        encounter("in", start="2024-06-01T08:00:00Z"),
        encounter("out-recent", start="2024-06-01T08:00:00Z", end="2024-06-08T10:00:00Z"),
        encounter("out-long-ago", start="2024-05-01T08:00:00Z", end="2024-05-03T10:00:00Z"),
        encounter("future", start="2024-06-20T08:00:00Z"),
    ], CLASSES)
    as_of = datetime(2024, 6, 10, tzinfo=UTC)
    assert {s.encounter_id for s in census.stays(as_of)} == {"in"}
    recent = {s.encounter_id: s for s in census.stays(as_of, timedelta(days=7))}
    assert set(recent) == {"in", "out-recent"} and recent["out-recent"].discharged_at is not None
    # replaying June 5: the stay discharged on June 8 was still admitted then
    assert {s.encounter_id: s.discharged_at for s in census.stays(datetime(2024, 6, 5, tzinfo=UTC))} == {
        "in": None, "out-recent": None}
    # a newer load replaces the row (a discharge arrives)
    census.load_encounters([encounter("in", end="2024-06-09T12:00:00Z")], CLASSES)
    assert census.get("in").discharged_at == datetime(2024, 6, 9, 12, tzinfo=UTC)


def test_synthetic_bulk_export_loads_with_units_through_the_cli(small_hospital, tmp_path, monkeypatch):
    from serving.views.cli import app

    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    result = CliRunner().invoke(app, ["load-census", str(small_hospital), "--store-url", url])
    assert result.exit_code == 0, result.output
    census = Census(Store(url).engine)
    units = census.units()
    assert len(units) >= 3 and "unassigned" not in units
    expected = sum(1 for line in (small_hospital / "Encounter.ndjson").read_text().splitlines()
                   if json.loads(line)["class"]["code"] == "IMP")
    assert f"{expected}" in result.output
    stays = census.stays(datetime(2100, 1, 1, tzinfo=UTC), timedelta(days=365 * 100))
    assert len(stays) == expected


def test_census_and_outreach_tables_on_postgresql(postgres_url):  # noqa: F811
    store = Store(postgres_url)
    census, log = Census(store.engine), OutreachLog(store.engine)
    census.load_encounters([encounter("pg-1")], CLASSES)
    log.record("pg-1", "p1", OutreachStatus.ATTEMPTED, "cm1")
    log.record("pg-1", "p1", "reached", "cm2")
    assert census.get("pg-1").admitted_at == datetime(2024, 6, 1, 8, tzinfo=UTC)
    assert log.current(["pg-1"])["pg-1"].status == OutreachStatus.REACHED
    assert [o.status.value for o in log.history("pg-1")] == ["attempted", "reached"]
    store.dispose()

