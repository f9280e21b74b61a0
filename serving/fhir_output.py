"""FHIR R4 resources the service answers with: RiskAssessment, OperationOutcome,
CapabilityStatement. Built as JSON dicts and validated against fhir.resources' R4B models in
the tests. None of them carries note text.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from lang1ops.notes import ClinicalNote
from lang1ops.settings.serving import DEFAULT_BANDS, RiskBands
from lang1ops.tasks import TaskContract, TaskSpec

RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
MODEL_SYSTEM = "http://lang1-ops.org/fhir/CodeSystem/model"
RISK_IDENTIFIER = "urn:lang1-ops:risk-assessment"
ID_NAMESPACE = uuid.UUID("5b1e4c2e-1d9e-4c8a-9a4e-6c1f0a1a2b3c")


def risk_id(idempotency_key: str, task: str, model_version: str) -> str:
    """Stable id, so the same note scored by the same model always yields the same resource."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{idempotency_key}|{task}|{model_version}"))


def _concept(task: TaskSpec, option: int) -> dict:
    codings = [c.model_dump() for c in task.options[option].codings]
    return {"coding": codings, "text": codings[0]["display"]}


def risk_assessment(note: ClinicalNote, task: TaskSpec, probs, *, idempotency_key: str, model_name: str,
                    model_version: str, scored_at: datetime, bands: dict[str, RiskBands] | None = None,
                    reference_date: datetime | None = None) -> dict:
    """One RiskAssessment for one task: the event probability for binary tasks, one prediction
    per class for LOS and CCI."""
    bands = bands or DEFAULT_BANDS
    predictions = []
    if task.binary:
        p = float(probs[task.positive_option])
        prediction = {"outcome": _concept(task, task.positive_option), "probabilityDecimal": round(p, 6)}
        band = bands.get(task.name)
        if band:
            prediction["qualitativeRisk"] = {"coding": [{"system": RISK_PROBABILITY, "code": band.band(p)}]}
        if task.horizon_days:
            start = reference_date or note.date or scored_at
            prediction["whenPeriod"] = {"start": start.isoformat(), "end": (start + timedelta(days=task.horizon_days)).isoformat()}
        predictions.append(prediction)
    else:
        for k in range(task.n_classes):
            predictions.append({"outcome": _concept(task, k), "probabilityDecimal": round(float(probs[k]), 6)})
    resource = {
        "resourceType": "RiskAssessment",
        "id": risk_id(idempotency_key, task.name, model_version),
        "identifier": [{"system": RISK_IDENTIFIER, "value": f"{idempotency_key}|{task.name}|{model_version}"}],
        "status": "final",
        "method": {"coding": [{"system": MODEL_SYSTEM, "code": model_name, "version": model_version,
                               "display": f"{model_name} {model_version}"}]},
        "code": {"coding": [task.outcome.model_dump()], "text": task.title},
        "subject": {"reference": f"Patient/{note.patient_id}"},
        "occurrenceDateTime": scored_at.isoformat(),
        "basis": [{"reference": f"{note.resource_type}/{note.resource_id}"}] if note.resource_id else [],
        "prediction": predictions,
        "note": [{"text": f"{task.title} ({task.horizon}) from a language model reading one note; an operational "
                          "estimate, not a diagnosis."}],
    }
    if note.encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{note.encounter_id}"}
    if not resource["basis"]:
        del resource["basis"]
    return resource


def risk_assessments(note: ClinicalNote, contract: TaskContract, probabilities: dict, **kwargs) -> list[dict]:
    return [risk_assessment(note, contract.task(task), probs, **kwargs) for task, probs in probabilities.items()]


def operation_outcome(code: str, diagnostics: str, severity: str = "error") -> dict:
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]}


def collection(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


def capability_statement(base_url: str, software_version: str, contract: TaskContract, published: datetime) -> dict:
    tasks = ", ".join(t.name for t in contract.tasks)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": published.isoformat(),
        "kind": "instance",
        "software": {"name": "lang1-ops", "version": software_version},
        "implementation": {"description": "Lang1 operational risk scoring from clinical notes", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "rest": [{
            "mode": "server",
            "documentation": f"POST a DocumentReference (or Parameters carrying one) to DocumentReference/$score, or a "
                             f"batch Bundle of them to the base; answers are RiskAssessments for the tasks {tasks}.",
            "security": {"cors": False, "service": [{"coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "description": "Bearer tokens: JWTs of SMART Backend Services clients (RS384/ES384) or API keys."},
            "resource": [
                {"type": "DocumentReference",
                 "operation": [{"name": "score", "definition": f"{base_url}/OperationDefinition/DocumentReference-score"}]},
                {"type": "RiskAssessment", "profile": "http://hl7.org/fhir/StructureDefinition/RiskAssessment"},
            ],
            "interaction": [{"code": "batch"}],
        }],
    }
