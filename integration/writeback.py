"""Write RiskAssessments back to the hospital FHIR server, each exactly once.

Each RiskAssessment gets one identifier in ``identifier_system`` whose value is the
sha256 of (DocumentReference id and version, task, model version), and is written with
a conditional create (``If-None-Exist: identifier=system|value``): a repeated
notification, a retried job or a second worker finds the earlier one instead of writing
a duplicate. The server assigns the resource id.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field

from integration.fhir_client import FhirClient

DEFAULT_IDENTIFIER_SYSTEM = "urn:lang1-ops:risk-assessment"


def writeback_key(document_reference: str, version: str, task: str, model_version: str) -> str:
    """sha256 hex of 'DocumentReference/<id>/_history/<version>|<task>|<model version>'."""
    return hashlib.sha256(f"{document_reference}/_history/{version}|{task}|{model_version}".encode()).hexdigest()


def task_of(risk_assessment: dict) -> str:
    """The task name of a RiskAssessment built by serving.fhir_output (identifier '<key>|<task>|<version>')."""
    for identifier in risk_assessment.get("identifier") or []:
        parts = str(identifier.get("value", "")).split("|")
        if len(parts) >= 3:
            return parts[-2]
    coding = (risk_assessment.get("code") or {}).get("coding") or [{}]
    return str(coding[0].get("code", "unknown"))


def model_version_of(risk_assessment: dict) -> str:
    coding = (risk_assessment.get("method") or {}).get("coding") or [{}]
    return str(coding[0].get("version", "unknown"))


def for_writeback(risk_assessment: dict, document_reference: str, version: str,
                  identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM) -> dict:
    """A copy ready to POST: no id (the server assigns it; some servers refuse a conditional
    create whose body id differs from the match), the one write-back identifier, and the
    versioned basis so the EHR can see exactly which note version was read."""
    out = copy.deepcopy(risk_assessment)
    out.pop("id", None)
    out.pop("meta", None)
    key = writeback_key(document_reference, version, task_of(risk_assessment), model_version_of(risk_assessment))
    out["identifier"] = [{"system": identifier_system, "value": key}]
    out["basis"] = [{"reference": f"{document_reference}/_history/{version}"}]
    return out


@dataclass
class WritebackResult:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"created": self.created, "existing": self.existing}


def write_risk_assessments(client: FhirClient, risk_assessments: list[dict], document_reference: str, version: str,
                           identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM) -> WritebackResult:
    """Conditional-create each one; returns the server ids created and found."""
    result = WritebackResult()
    for resource in risk_assessments:
        ready = for_writeback(resource, document_reference, version, identifier_system)
        value = ready["identifier"][0]["value"]
        saved, created = client.conditional_create(ready, {"identifier": f"{identifier_system}|{value}"})
        (result.created if created else result.existing).append(f"RiskAssessment/{saved.get('id', '?')}")
    return result
