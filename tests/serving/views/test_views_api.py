"""The views' JSON, CSV and FHIR APIs in process (TestClient) over demo data."""

from __future__ import annotations

import csv
import io

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.list import List as FhirList

from lang1ops.settings.views import ViewsSettings
from serving.views import bed_board as beds
from serving.views.census import Census
from serving.views.router import views_router
from serving.views.scores import latest_scores
from tests.serving.views.conftest import bearer, build_app


@pytest.fixture(scope="module")
def client(views_world):
    app, store = build_app(views_world)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.store, c.world = store, views_world
        yield c


def test_worklist_ranks_current_and_recent_inpatients_by_readmission_risk(client):
    r = client.get("/views/api/worklist", headers=bearer("reader"))
    assert r.status_code == 200, r.text
    data = r.json()
    rows = data["rows"]
    assert data["total"] == len(client.world["stays"]) == len(rows)
    risks = [row["readmission"] for row in rows if row["readmission"] is not None]
    assert risks == sorted(risks, reverse=True) and len(risks) >= 16
    assert rows[-1]["tier"] == "unscored"  # not scored yet: last
    assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1))
    top = rows[0]
    assert top["tier"] in ("high", "moderate") and top["basis_note_type"] == "discharge_summary"
    assert {f["task"] for f in top["factors"]} == {"mortality", "denial", "cci", "los"}
    assert all("%" in f["text"] for f in top["factors"]) and data["factors_note"]
    assert top["outreach"]["status"] == "not-contacted"


def test_worklist_filters(client):
    unit = "MICU"
    rows = client.get("/views/api/worklist", params={"unit": unit, "tier": ["high", "moderate"]},
                      headers=bearer("reader")).json()["rows"]
    assert rows and all(r["unit"] == unit and r["tier"] in ("high", "moderate") for r in rows)
    discharged = client.get("/views/api/worklist", params={"status": "discharged"}, headers=bearer("reader")).json()["rows"]
    assert len(discharged) == 16 and all(r["discharged_at"] for r in discharged)
    day = discharged[0]["discharged_at"][:10]
    same_day = client.get("/views/api/worklist", params={"discharged_from": day, "discharged_to": day},
                          headers=bearer("reader")).json()["rows"]
    assert same_day and all(r["discharged_at"][:10] == day for r in same_day)
    assert client.get("/views/api/worklist", params={"tier": "extreme"}, headers=bearer("reader")).status_code == 400
    for as_of in ("0001-01-01", "9999-12-31T23:59:59", "0001-01-01T00:00:00+14:00"):
        for path in ("/views/api/worklist", "/views/api/beds"):
            r = client.get(path, params={"as_of": as_of}, headers=bearer("reader"))
            assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", (path, as_of, r.text)


def test_outreach_is_set_by_a_writer_audited_and_kept_as_history(client):
    encounter = client.world["stays"][3].encounter_id
    path = f"/views/api/worklist/{encounter}/outreach"
    assert client.put(path, json={"status": "reached"}, headers=bearer("reader")).status_code == 403
    # the scorer role (an EHR's key) may post notes, not change a care manager's workflow
    assert client.put(path, json={"status": "reached"}, headers=bearer("scorer")).status_code == 403
    assert client.put(path, json={"status": "maybe"}, headers=bearer("care-manager")).status_code == 400
    assert client.put("/views/api/worklist/nope/outreach", json={"status": "reached"},
                      headers=bearer("care-manager")).status_code == 404
    assert client.put(path, json={"status": "attempted"}, headers=bearer("care-manager")).status_code == 200
    r = client.put(path, json={"status": "scheduled"}, headers=bearer("admin"))
    assert r.status_code == 200 and r.json()["outreach"]["actor"] == "admin-user"
    history = client.get(path, headers=bearer("reader")).json()["history"]
    assert [h["status"] for h in history] == ["attempted", "scheduled"]
    row = next(x for x in client.get("/views/api/worklist", headers=bearer("reader")).json()["rows"]
               if x["encounter"] == encounter)
    assert row["outreach"]["status"] == "scheduled"
    audits = client.store.audit_records(action="worklist-outreach")
    assert audits[0]["resource_ids"] == [f"Encounter/{encounter}"] and audits[0]["detail"] == "status=scheduled"
    assert audits[0]["actor"] == "admin-user"
    filtered = client.get("/views/api/worklist", params={"outreach": "scheduled"}, headers=bearer("reader")).json()["rows"]
    assert encounter in {x["encounter"] for x in filtered}


def test_csv_and_fhir_list_exports(client):
    r = client.get("/views/api/worklist.csv", params={"status": "discharged"}, headers=bearer("reader"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 16 and rows[0]["rank"] == "1" and float(rows[0]["readmission"]) >= float(rows[-1]["readmission"])
    r = client.get("/views/api/worklist/fhir", headers=bearer("reader"))
    assert r.headers["content-type"].startswith("application/fhir+json")
    resource = r.json()
    FhirList.model_validate(resource)
    assert resource["entry"][0]["item"]["reference"].startswith("Encounter/")
    assert resource["orderedBy"]["coding"][0]["code"] == "priority"
    empty = client.get("/views/api/worklist/fhir", params={"unit": "No Such Unit"}, headers=bearer("reader")).json()
    FhirList.model_validate(empty)
    assert "entry" not in empty and empty["emptyReason"]


def test_bed_board_api_matches_the_arithmetic(client):
    world = client.world
    r = client.get("/views/api/beds", params={"days": 3, "as_of": world["now"].isoformat()}, headers=bearer("reader"))
    assert r.status_code == 200, r.text
    board = r.json()
    census = Census(client.store.engine)
    admitted = [s for s in census.stays(world["now"]) if s.discharged_at is None]
    scores = latest_scores(client.store, [s.encounter_id for s in admitted], world["now"])
    patients = [beds.Admitted(s.encounter_id, s.patient_id, s.unit, s.admitted_at,
                              scores.get(s.encounter_id, {}).get("los").probabilities if "los" in scores.get(s.encounter_id, {}) else None)
                for s in admitted]
    settings = ViewsSettings()
    from zoneinfo import ZoneInfo
    expected = beds.bed_board(patients, world["now"], 3, ZoneInfo("UTC"), settings.los_tail_mean_extra_days,
                              settings.band_coverage)
    assert board["units"] == expected["units"]
    assert sum(u["census"] for u in board["units"]) == 24 and sum(len(u["unscored"]) for u in board["units"]) == 2
    assert client.get("/views/api/beds", headers=bearer("reader")).json()["days"] == 7


def test_mlops_lists_model_promotions_refusals_and_performance(client):
    r = client.get("/views/api/mlops", headers=bearer("reader"))
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"]["version"] == "v0001" and "readmission" in data["model"]["tasks"]
    actions = [(e["action"], e["version"]) for e in data["registry"]["events"]]
    assert ("promote", "v0001") in actions and ("refuse", "v0002") in actions
    assert data["registry"]["aliases"]["champion"] == "v0001"
    perf = [p for p in data["performance"] if p["task"] == "readmission"]
    assert len(perf) >= 3 and all(p["auroc"] is None or 0.5 < p["auroc"] <= 1 for p in perf)
    assert data["drift"] == [] or isinstance(data["drift"], list)


def test_reading_needs_a_token_and_pages_are_static_shells(client):
    assert client.get("/views/api/worklist").status_code == 401
    assert client.get("/views/api/beds", headers={"Authorization": "Bearer wrong"}).status_code == 401
    page = client.get("/ui/worklist")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "enc-" not in page.text and "pat-" not in page.text  # no data in the HTML itself
    assert client.get("/ui/static/views.js").status_code == 200
    assert client.get("/ui/static/../router.py").status_code == 404


def test_a_reader_cannot_be_the_outreach_role():
    with pytest.raises(ValueError, match="write role"):
        views_router(ViewsSettings(outreach_role="reader"))
    with pytest.raises(ValueError, match="not a role"):
        views_router(ViewsSettings(outreach_role="nurse"))


def test_mlops_shows_drift_checks_and_loop_events_from_monitoring_history(client, tmp_path):
    from datetime import UTC, datetime

    from monitoring.history import MonitoringHistory

    history = MonitoringHistory(client.store)
    (tmp_path / "report.html").write_text("<html><body>evidently drift report</body></html>")
    now = datetime.now(UTC)
    run_id = history.record_drift(checked_at=now, window_start=now, window_end=now, window_by="scored_at",
                                  model_version="v0001", n_current=40, n_reference=200, detected=True,
                                  checks={"encodings": {"detected": True}}, features={}, report_dir=str(tmp_path),
                                  duration_s=1.0)
    history.record_event("c1", "refuse", "refused", champion="v0001", candidate="v0002")
    data = client.get("/views/api/mlops", headers=bearer("reader")).json()
    assert data["drift"][0]["drifted"] and "encodings" in data["drift"][0]["summary"]
    assert data["loop"][0]["step"] == "refuse" and data["loop"][0]["candidate"] == "v0002"
    report = client.get(f"/views/api/drift/{run_id}/report", headers=bearer("reader"))
    assert report.status_code == 200 and "evidently drift report" in report.text
    assert client.get(f"/views/api/drift/{run_id}/report").status_code == 401
    assert client.get("/views/api/drift/999999/report", headers=bearer("reader")).status_code == 404


def test_a_configured_as_of_replays_the_views_at_that_instant(views_world):
    """The demo's hospital ends in the past: `views.as_of` shows it as of then when a request
    names no instant; an explicit as_of still wins."""
    from datetime import timedelta

    replay = views_world["now"] - timedelta(days=365)
    app, store = build_app(views_world, ViewsSettings(as_of=replay))
    with TestClient(app) as c:
        then = c.get("/views/api/worklist", headers=bearer("reader")).json()
        assert then["as_of"].startswith(replay.isoformat()[:19]) and then["total"] == 0  # nobody admitted a year ago
        now = c.get("/views/api/worklist", params={"as_of": views_world["now"].isoformat()}, headers=bearer("reader"))
        assert now.json()["total"] > 0
    store.dispose()
