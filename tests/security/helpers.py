"""Requests of the attack suite (the service itself: conftest.py)."""

from __future__ import annotations

import base64
import json

SECRET = "OKAPI-PHI-4410"  # in every note; must never come back out
ALERTMANAGER_TOKEN = "am-webhook-token-0099"
KEYS = {role: f"k-{role}-secret" for role in ("scorer", "reader", "care_manager", "admin")}  # one key per Role


def note(text: str = f"HPI: 81 yo F {SECRET} with sepsis.", *, doc_id: str | None = "n1", version: str | None = "1",
         patient: str = "A", encounter: str | None = "e1", loinc: str = "34117-2", date: str = "2024-03-01T10:00:00Z") -> dict:
    resource = {"resourceType": "DocumentReference", "status": "current",
                "type": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
                "subject": {"reference": f"Patient/{patient}"}, "date": date,
                "content": [{"attachment": {"contentType": "text/plain",
                                            "data": base64.b64encode(text.encode()).decode()}}]}
    if doc_id:
        resource["id"] = doc_id
    if version:
        resource["meta"] = {"versionId": version}
    if encounter:
        resource["context"] = {"encounter": [{"reference": f"Encounter/{encounter}"}]}
    return resource


def post(client, path: str, body, role: str | None = "scorer", content_type: str = "application/fhir+json",
         **kwargs):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type, **kwargs.pop("headers", {})}
    if role:
        headers["Authorization"] = f"Bearer {KEYS[role]}"
    return client.post(path, content=data, headers=headers, **kwargs)
