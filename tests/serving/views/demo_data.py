"""Demo-like hospital data for the views' tests and screenshots: an inpatient census over four
units and stored scores (written straight into the store, as scoring would have: ids and
hashes only, no text), and a registry with a promotion and a refusal."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from serving.store import NewScore, Store
from serving.views.census import Census, Stay

UNITS = ("4 West Medicine", "5 East Cardiology", "6 North Surgery", "MICU")


def _dirichlet(rng: np.random.Generator, alpha: list[float]) -> list[float]:
    return [float(x) for x in rng.dirichlet(alpha)]


def _score(encounter: str, patient: str, note: str, note_type: str, probabilities: dict, scored_at: datetime,
           version: str) -> NewScore:
    sha = hashlib.sha256(f"{encounter}/{note}".encode()).hexdigest()
    return NewScore(
        idempotency_key=f"DocumentReference/{note}/_history/1", request_id=f"req-{note}", resource_type="DocumentReference",
        resource_id=note, version_id="1", text_sha256=sha, note_type=note_type, patient_id=patient,
        encounter_id=encounter, note_date=scored_at, model_name="lang1-ops", model_version=version, model_kind="mc",
        shadow=False, source="api", probabilities=probabilities, response=None, note_tokens=400, truncated=False,
        latency_ms=120.0, scored_at=scored_at)


def write_demo(store: Store, now: datetime, n_admitted: int = 24, n_discharged: int = 16, seed: int = 7,
               version: str = "v0001", unscored: int = 2) -> list[Stay]:
    """Census + scores relative to `now`. The last `unscored` admitted stays have no scores."""
    rng = np.random.default_rng(seed)
    stays, scores = [], []
    for i in range(n_admitted + n_discharged):
        encounter, patient = f"enc-{1000 + i}", f"pat-{5000 + i}"
        unit = UNITS[i % len(UNITS)]
        admitted = now - timedelta(days=float(rng.uniform(0.2, 9.0)))
        discharged = None if i < n_admitted else now - timedelta(days=float(rng.uniform(0.1, 5.0)))
        if discharged is not None and discharged <= admitted:
            admitted = discharged - timedelta(days=float(rng.uniform(1, 6)))
        stays.append(Stay(encounter, patient, unit, "IMP", admitted, discharged))
        if i >= n_admitted - unscored and i < n_admitted:
            continue
        sicker = rng.uniform(0.3, 3.0)
        hp_time = admitted + timedelta(hours=3)
        scores.append(_score(encounter, patient, f"hp-{i}", "admission_hp", {
            "mortality": [1 - (p := float(rng.beta(1, 25 / sicker))), p],
            "los": _dirichlet(rng, [3 / sicker, 1.5, 1.5, 1.2 * sicker]),
            "cci": _dirichlet(rng, [2 / sicker, 2, 1.5, sicker, 0.5 * sicker]),
            "denial": [1 - (d := float(rng.beta(1.2, 12))), d]}, hp_time, version))
        if discharged is not None or rng.uniform() < 0.35:  # discharged, or a readmission score asked early
            r = float(rng.beta(1.5 * sicker, 6))
            scores.append(_score(encounter, patient, f"ds-{i}", "discharge_summary", {"readmission": [1 - r, r]},
                                 (discharged or now) - timedelta(hours=1), version))
    Census(store.engine).upsert(stays)
    for score in scores:
        store.save_score(score)
    return stays


def write_outcomes(store: Store, now: datetime, months: int = 4, per_month: int = 30, seed: int = 3) -> None:
    """Older discharged encounters with readmission scores and matured outcomes (for performance over time)."""
    rng = np.random.default_rng(seed)
    for m in range(months):
        for k in range(per_month):
            # each month's outcomes inside one calendar month (m + 2 months back): the page groups by
            # calendar month, and days counted back from today split some months into slivers of 3 notes
            year, month = divmod(now.year * 12 + now.month - 1 - (m + 2), 12)
            when = now.replace(year=year, month=month + 1, day=1) + timedelta(days=k % 28)
            label = int(rng.uniform() < 0.2)
            p = float(np.clip(rng.normal(0.35 if label else 0.15, 0.1), 0.01, 0.99))
            encounter, patient = f"old-{m}-{k}", f"pold-{m}-{k}"
            store.save_score(_score(encounter, patient, f"old-ds-{m}-{k}", "discharge_summary",
                                    {"readmission": [1 - p, p]}, when, "v0001"))
            store.record_outcome(patient, encounter, "readmission", label, when + timedelta(days=30), "demo")


def write_registry(root: Path, artifact: Path) -> None:
    """A registry with two versions: v0001 promoted, v0002 refused by the gate."""
    from lang1ops.registry import Registry

    registry = Registry(root)
    v1 = registry.register(artifact, "trainer", "first model")
    registry.promote("lang1-ops", v1.version, "mlops-lead", "initial champion (gate passed)")
    v2 = registry.register(artifact, "retrain-loop", "monthly retrain")
    registry.refuse("lang1-ops", v2.version, "retrain-loop", "gate: readmission AUROC not shown non-inferior")
