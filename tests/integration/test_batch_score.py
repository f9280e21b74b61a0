"""`lang1ops batch score`: an export scored end to end with the tiny model, in process and over Ray."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.riskassessment import RiskAssessment

from integration.batch_score import count_notes, run_batch
from integration.bulk_export import BulkExportClient
from lang1ops.settings.bulk import BulkExportSettings
from lang1ops.tasks import DEFAULT_CONTRACT
from serving.backends import LocalBackend, ResolvedModel
from serving.store import Store
from tests.integration.bulk_server import BulkServer
from training.artifacts import zero_shot_artifact

SECRET = "QUOKKA-PHI-5521"  # in the text of the bad notes: must appear in no output
EVER = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def bad_notes() -> list[dict]:
    base = {"resourceType": "DocumentReference", "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2"}]},
            "subject": {"reference": "Patient/p-bad"}}
    return [
        {**base, "id": "bad-no-subject", "subject": None,
         "content": [{"attachment": {"contentType": "text/plain", "data": b64(f"no subject {SECRET}")}}]},
        {**base, "id": "bad-pdf", "content": [{"attachment": {"contentType": "application/pdf", "data": b64(SECRET)}}]},
        {**base, "id": "bad-empty", "content": [{"attachment": {"contentType": "text/plain", "data": b64("   ")}}]},
        {**base, "id": "bad-type", "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
         "content": [{"attachment": {"contentType": "text/plain", "data": b64(f"progress {SECRET}")}}]},
    ]


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """A small hospital's export with four unusable notes and a malformed line appended."""
    from lang1ops.synthetic import HospitalSpec, generate_hospital

    out = tmp_path_factory.mktemp("batch") / "export"
    generate_hospital(HospitalSpec(name="Batch Test", patients=6, seed=11, start=date(2024, 1, 1),
                                   end=date(2024, 12, 31)), out)
    with open(out / "DocumentReference.ndjson", "a") as f:
        for note in bad_notes():
            f.write(json.dumps({k: v for k, v in note.items() if v is not None}) + "\n")
        f.write('{"resourceType": "DocumentReference", "id": "broken", "text": "' + SECRET + '"\n')
    return out


@pytest.fixture(scope="module")
def artifact(tiny_llama_dir, tmp_path_factory) -> Path:
    return zero_shot_artifact(tiny_llama_dir, tmp_path_factory.mktemp("batch_model") / "artifact", DEFAULT_CONTRACT,
                              max_note_tokens=64)


@pytest.fixture(scope="module")
def backend(artifact) -> LocalBackend:
    return LocalBackend(ResolvedModel("v0001", artifact), dtype="float32")


def good_note_ids(export: Path) -> list[str]:
    return [json.loads(x)["id"] for x in (export / "DocumentReference.ndjson").read_text().splitlines()
            if x.strip() and '"broken"' not in x and '"bad-' not in x]


def read_ndjson(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_export_scored_end_to_end_then_rerun_scores_nothing_twice(export_dir, backend, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    with BulkServer(export_dir, polls_before_ready=1) as server, \
            BulkExportClient(server.base, BulkExportSettings(poll_min_s=0.05, timeout_s=30)) as client:
        export = client.export(tmp_path / "export", types=["DocumentReference"])
    good = good_note_ids(export_dir)
    summary = run_batch(export.directory, tmp_path / "out", backend, store)
    assert summary.notes == len(good) + 4 and summary.scored == len(good) and summary.failed == 4
    assert summary.failures == {"not-supported": 2, "required": 1, "value": 1}
    assert summary.source_problems == {"malformed-json": 1}

    risks = read_ndjson(tmp_path / "out" / "RiskAssessment.ndjson")
    for r in risks:
        RiskAssessment.model_validate(r)
        assert r["status"] == "final" and r["basis"][0]["reference"].startswith("DocumentReference/")
    assert summary.risk_assessments == len(risks)
    # an H&P gets four tasks, a discharge summary one (readmission)
    per_note = {}
    for r in risks:
        per_note.setdefault(r["basis"][0]["reference"].split("/")[1], set()).add(r["code"]["coding"][0]["code"])
    assert set(per_note) == set(good)
    assert {frozenset(v) for v in per_note.values()} == {
        frozenset({"in-hospital-death", "length-of-stay", "charlson-index", "claim-denial"}),
        frozenset({"readmission-30d"})}

    frame = store.scores_between(*EVER)
    assert len(frame) == len(good) and set(frame["source"]) == {"bulk"}
    assert set(frame["resource_id"]) == set(good) and frame["encounter_id"].notna().all()

    failures = read_ndjson(tmp_path / "out" / "OperationOutcome.ndjson")
    for f in failures:
        OperationOutcome.model_validate(f)
    assert sorted(f["issue"][0]["diagnostics"].split(" ")[0] for f in failures) == sorted(
        f"DocumentReference/{n['id']}" for n in bad_notes())
    for path in (tmp_path / "out").iterdir():
        assert SECRET not in path.read_text(), path.name  # note text never reaches an output
    assert not list((tmp_path / "out").glob("*.part"))

    again = run_batch(export.directory, tmp_path / "out2", backend, store)
    assert again.scored == 0 and again.replayed == len(good) and again.failed == 4
    assert len(store.scores_between(*EVER)) == len(good)
    assert read_ndjson(tmp_path / "out2" / "RiskAssessment.ndjson") == risks  # the stored answers, unchanged
    audit = store.audit_records(action="batch-score")
    assert len(audit) == 2 and all(SECRET not in json.dumps(a, default=str) for a in audit)
    store.dispose()


def test_batch_cli_scores_from_an_export_url(export_dir, artifact, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from integration.batch_cli import app

    monkeypatch.setenv("LANG1OPS_HOME", str(tmp_path))
    store_url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    with BulkServer(export_dir, polls_before_ready=0) as server:
        result = CliRunner().invoke(app, ["score", "--export-url", server.base, "--out", str(tmp_path / "out"),
                                          "--model", str(artifact), "--workers", "0", "--store-url", store_url,
                                          "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["scored"] == len(good_note_ids(export_dir)) and summary["failed"] == 4
    assert (tmp_path / "out" / "export" / "manifest.json").exists()
    assert count_notes(tmp_path / "out" / "export") == summary["notes"] + 1  # + the malformed line
    bad = CliRunner().invoke(app, ["score", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "exactly one of" in bad.output


def test_ray_workers_score_like_the_local_backend(export_dir, artifact, backend, tmp_path):
    """Two Ray actors, each with the model, give the same probabilities as the in-process scorer."""
    import ray

    from integration.batch_score import RayPoolBackend
    from lang1ops.ray_local import ensure_ray

    small = tmp_path / "small"
    small.mkdir()
    lines = (export_dir / "DocumentReference.ndjson").read_text().splitlines()[:8]
    (small / "DocumentReference.ndjson").write_text("\n".join(lines) + "\n")
    local_store = Store(f"sqlite:///{tmp_path / 'local.sqlite'}")
    ray_store = Store(f"sqlite:///{tmp_path / 'ray.sqlite'}")
    local = run_batch(small, tmp_path / "local", backend, local_store)
    ensure_ray(num_cpus=2)
    try:
        pool = RayPoolBackend(ResolvedModel("v0001", artifact), 2, dtype="float32", worker_cpus=1)
        try:
            parallel = run_batch(small, tmp_path / "ray", pool, ray_store, in_flight=4, workers=2)
        finally:
            pool.close()
    finally:
        ray.shutdown()
    assert parallel.scored == local.scored == 8 and parallel.failed == 0
    a = local_store.scores_between(*EVER).set_index("resource_id").sort_index()
    b = ray_store.scores_between(*EVER).set_index("resource_id").sort_index()
    columns = [c for c in a.columns if c.startswith("p_")]
    assert columns and (abs(a[columns].fillna(-1) - b[columns].fillna(-1)) < 1e-4).all().all()


def documented_commands() -> dict[str, list[str]]:
    """The `lang1ops batch ...` examples of docs/integration.md, by example name."""
    import re
    import shlex

    doc = (Path(__file__).parents[2] / "docs" / "integration.md").read_text()
    found = {}
    for name, body in re.findall(r"<!-- example: (batch-[\w-]+) -->\s*```bash\n(.*?)```", doc, re.S):
        words = shlex.split(body.replace("\\\n", " "))
        assert words[:2] == ["lang1ops", "batch"], name
        found[name] = words[2:]
    return found


def test_documented_examples_run(export_dir, artifact, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from integration.batch_cli import app

    monkeypatch.setenv("LANG1OPS_HOME", str(tmp_path))
    commands = documented_commands()
    assert set(commands) == {"batch-score", "batch-score-input", "batch-outcomes"}
    store = ["--store-url", f"sqlite:///{tmp_path / 'docs.sqlite'}"]
    summaries = {}
    with BulkServer(export_dir, polls_before_ready=1) as server:
        for name, words in commands.items():
            args = [w.replace("https://ehr.example.org/fhir", server.base).replace("var/bulk", str(tmp_path))
                    .replace("champion", str(artifact)) for w in words]
            args += store
            if args[0] == "score":  # the tiny model stands in for the registry's champion
                args += ["--dtype", "float32"] + ([] if "--model" in args else ["--model", str(artifact)])
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, (name, result.output)
            summaries[name] = json.loads(result.stdout[result.stdout.index("{"):])
    good = len(good_note_ids(export_dir))
    assert summaries["batch-score"]["scored"] == good
    assert summaries["batch-score-input"]["replayed"] == good and summaries["batch-score-input"]["scored"] == 0
    assert summaries["batch-outcomes"]["recorded"] > 0
