"""FHIR R4 resources for the synthetic hospital, as plain JSON dicts (fast to build, and
validated against fhir.resources' R4B models in the tests).

Coding follows what US hospitals export: v3 ActCode encounter classes, HL7
discharge-disposition and admit-source codes, ICD-10-CM conditions, LOINC document types,
US Core race/ethnicity extensions, and CARIN Blue Button adjudication with X12 claim
adjustment reason codes for denials.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta

from lang1ops.synthetic.catalog import PAYERS, UNITS
from lang1ops.synthetic.hospital import Patient, Stay
from lang1ops.synthetic.notes import Author

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
ADMIT_SOURCE = "http://terminology.hl7.org/CodeSystem/admit-source"
CARC = "https://x12.org/codes/claim-adjustment-reason-codes"
C4BB_ADJ = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudicationDiscriminator"
ADJUDICATION = "http://terminology.hl7.org/CodeSystem/adjudication"
SERVICE_TYPE = "http://lang1-ops.org/fhir/CodeSystem/hospital-service"

DOC_TYPES = {"hp": ("34117-2", "History and physical note"), "ds": ("18842-5", "Discharge summary")}
CLASS_DISPLAY = {"IMP": "inpatient encounter", "EMER": "emergency", "AMB": "ambulatory"}


def ts(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Systems:
    slug: str

    @property
    def mrn(self) -> str:
        return f"https://{self.slug}.example.org/fhir/sid/mrn"

    @property
    def visit(self) -> str:
        return f"https://{self.slug}.example.org/fhir/sid/visit-number"

    @property
    def claim(self) -> str:
        return f"https://{self.slug}.example.org/fhir/sid/claim-number"

    @property
    def note(self) -> str:
        return f"https://{self.slug}.example.org/fhir/sid/note-id"


def organizations(sys: Systems, name: str) -> list[dict]:
    out = [
        {"resourceType": "Organization", "id": "main", "active": True, "name": name,
         "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov"}]}]},
        {"resourceType": "Organization", "id": "sister", "active": True, "name": f"{name} - Sister Campus",
         "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov"}]}],
         "partOf": {"reference": "Organization/main"}},
    ]
    for key, (payer, _) in PAYERS.items():
        out.append({"resourceType": "Organization", "id": f"payer-{key.replace('_', '-')}", "active": True, "name": payer,
                    "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "pay"}]}]})
    return out


def unit_id(unit: str) -> str:
    return "loc-" + "".join(ch.lower() if ch.isalnum() else "-" for ch in unit).strip("-")


def locations(sys: Systems) -> list[dict]:
    units = sorted({u for us in UNITS.values() for u in us} | {"MICU", "Dialysis Center", "Emergency Department"})
    return [{"resourceType": "Location", "id": unit_id(u), "status": "active", "name": u, "mode": "instance",
             "physicalType": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/location-physical-type", "code": "wa"}]},
             "managingOrganization": {"reference": "Organization/main"}} for u in units]


def practitioner(sys: Systems, a: Author) -> dict:
    given, _, family = a.name.partition(" ")
    return {"resourceType": "Practitioner", "id": a.id, "active": True,
            "name": [{"family": family, "given": [given], "suffix": [a.credentials]}],
            "qualification": [{"code": {"text": a.role}}]}


def patient(sys: Systems, p: Patient) -> dict:
    r = {
        "resourceType": "Patient", "id": p.id,
        "extension": [
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
             "extension": [{"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": p.race[0],
                                                                  "display": p.race[1]}},
                           {"url": "text", "valueString": p.race[1]}]},
            {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
             "extension": [{"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": p.ethnicity[0],
                                                                  "display": p.ethnicity[1]}},
                           {"url": "text", "valueString": p.ethnicity[1]}]},
        ],
        "identifier": [{"use": "usual", "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                        "system": sys.mrn, "value": p.mrn}],
        "name": [{"use": "official", "family": p.family, "given": [p.given]}],
        "gender": p.sex, "birthDate": p.birth_date.isoformat(),
        "managingOrganization": {"reference": "Organization/main"},
    }
    if p.deceased is not None:
        r["deceasedDateTime"] = ts(p.deceased)
    return r


def coverage(sys: Systems, p: Patient) -> dict:
    assert p.payer
    name, code = PAYERS[p.payer]
    return {"resourceType": "Coverage", "id": f"cov-{p.id}", "status": "active",
            "type": {"coding": [{"system": ACT_CODE, "code": code}], "text": name},
            "beneficiary": {"reference": f"Patient/{p.id}"},
            "payor": [{"reference": f"Organization/payer-{p.payer.replace('_', '-')}", "display": name}]}


def encounter(sys: Systems, s: Stay) -> dict:
    r = {
        "resourceType": "Encounter", "id": s.id,
        "identifier": [{"system": sys.visit, "value": s.id.upper()}],
        "status": "finished" if s.discharged else "in-progress",
        "class": {"system": ACT_CODE, "code": s.klass, "display": CLASS_DISPLAY[s.klass]},
        "serviceType": {"coding": [{"system": SERVICE_TYPE, "code": s.service}], "text": s.service},
        "subject": {"reference": f"Patient/{s.patient.id}"},
        "period": {"start": ts(s.admitted)} | ({"end": ts(s.discharged)} if s.discharged else {}),
        "serviceProvider": {"reference": f"Organization/{s.facility}"},
        "location": [{"location": {"reference": f"Location/{unit_id(s.unit)}", "display": s.unit},
                      "status": "completed" if s.discharged else "active"}],
    }
    if s.klass == "IMP" and s.service not in ("rehabilitation", "dialysis", "emergency"):
        r["priority"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActPriority",
                                     "code": "EL" if s.elective else "EM"}]}
        r["reasonCode"] = [{"coding": [{"system": ICD10CM, "code": s.coded[0]}]}] if s.coded else []
        if s.hp_author:
            r["participant"] = [{"type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                                        "code": "ATND"}]}], "individual": {"reference": f"Practitioner/{s.hp_author.id}"}}]
        if s.coded:
            r["diagnosis"] = [{"condition": {"reference": f"Condition/{s.id}-c{i}"}, "rank": i + 1} for i in range(len(s.coded))]
    hosp: dict = {"admitSource": {"coding": [{"system": ADMIT_SOURCE, "code": s.admit_source}]}}
    if s.discharged and s.disposition:
        hosp["dischargeDisposition"] = {"coding": [{"system": DISPOSITION, "code": s.disposition}]}
    r["hospitalization"] = hosp
    return r


def conditions(sys: Systems, s: Stay) -> list[dict]:
    return [{"resourceType": "Condition", "id": f"{s.id}-c{i}",
             "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
             "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
             "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}],
             "code": {"coding": [{"system": ICD10CM, "code": code}]},
             "subject": {"reference": f"Patient/{s.patient.id}"}, "encounter": {"reference": f"Encounter/{s.id}"},
             "recordedDate": ts(s.discharged or s.admitted)}
            for i, code in enumerate(s.coded)]


def document(sys: Systems, s: Stay, kind: str, text: str, written: datetime, author: Author) -> dict:
    code, display = DOC_TYPES[kind]
    return {
        "resourceType": "DocumentReference", "id": f"{s.id}-{kind}",
        "identifier": [{"system": sys.note, "value": f"{s.id}-{kind}".upper()}],
        "status": "current", "docStatus": "final",
        "type": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                                  "code": "clinical-note"}]}],
        "subject": {"reference": f"Patient/{s.patient.id}"},
        "date": ts(written),
        "author": [{"reference": f"Practitioner/{author.id}"}],
        "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "language": "en-US",
                                    "data": base64.b64encode(text.encode("utf-8")).decode("ascii")}}],
        "context": {"encounter": [{"reference": f"Encounter/{s.id}"}],
                    "period": {"start": ts(s.admitted)} | ({"end": ts(s.discharged)} if s.discharged and kind == "ds" else {})},
    }


def claim_and_eobs(sys: Systems, s: Stay) -> list[dict]:
    """An institutional claim for the stay and, once the payer answered, its EOB(s).

    A denial is an EOB whose adjudication carries a CARIN `denialreason` with an X12 reason
    code; an appeal produces a second EOB for the same claim, adverse or favourable. The
    paper's label (data.denial_definition "appealed") is positive for a denial decided on
    appeal, whatever the decision; "any-denial" counts every initial denial.
    """
    p = s.patient
    assert s.discharged and p.payer
    payer_ref = f"Organization/payer-{p.payer.replace('_', '-')}"
    charge = round(4200 + 3100 * max(1, s.los_days) + 900 * len(s.coded), 2)
    claim = {
        "resourceType": "Claim", "id": f"{s.id}-claim",
        "identifier": [{"system": sys.claim, "value": f"{s.id}-CLM".upper()}],
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "institutional"}]},
        "use": "claim", "patient": {"reference": f"Patient/{p.id}"}, "created": ts(s.discharged + timedelta(days=3)),
        "insurer": {"reference": payer_ref}, "provider": {"reference": f"Organization/{s.facility}"},
        "priority": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal"}]},
        "diagnosis": [{"sequence": i + 1, "diagnosisCodeableConcept": {"coding": [{"system": ICD10CM, "code": c}]}}
                      for i, c in enumerate(s.coded)],
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": f"Coverage/cov-{p.id}"}}],
        "item": [{"sequence": 1, "encounter": [{"reference": f"Encounter/{s.id}"}],
                  "productOrService": {"coding": [{"system": "https://www.nubc.org/CodeSystem/RevenueCodes", "code": "0110"}],
                                       "text": "Room and board, private"},
                  "net": {"value": charge, "currency": "USD"}}],
        "total": {"value": charge, "currency": "USD"},
    }
    out = [claim]
    if s.denied is None or s.adjudicated is None:
        return out
    out.append(_eob(s, f"{s.id}-eob1", s.adjudicated, charge, denied=s.denied, payer_ref=payer_ref))
    if s.denied and s.appeal:
        out.append(_eob(s, f"{s.id}-eob2", s.adjudicated + timedelta(days=40), charge, denied=s.appeal == "adverse",
                        payer_ref=payer_ref, appeal=s.appeal))
    return out


def _eob(s: Stay, eob_id: str, when: datetime, charge: float, denied: bool, payer_ref: str, appeal: str | None = None) -> dict:
    p = s.patient
    paid = 0.0 if denied else round(charge * 0.62, 2)
    adjudication = [{"category": {"coding": [{"system": ADJUDICATION, "code": "submitted"}]}, "amount": {"value": charge, "currency": "USD"}},
                    {"category": {"coding": [{"system": ADJUDICATION, "code": "benefit"}]}, "amount": {"value": paid, "currency": "USD"}}]
    eob = {
        "resourceType": "ExplanationOfBenefit", "id": eob_id, "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "institutional"}]},
        "use": "claim", "patient": {"reference": f"Patient/{p.id}"}, "created": ts(when),
        "insurer": {"reference": payer_ref}, "provider": {"reference": f"Organization/{s.facility}"},
        "claim": {"reference": f"Claim/{s.id}-claim"}, "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"reference": f"Coverage/cov-{p.id}"}}],
        "item": [{"sequence": 1, "encounter": [{"reference": f"Encounter/{s.id}"}],
                  "productOrService": {"coding": [{"system": "https://www.nubc.org/CodeSystem/RevenueCodes", "code": "0110"}]},
                  "adjudication": adjudication}],
        "payment": {"amount": {"value": paid, "currency": "USD"}},
    }
    if denied and s.denial_reason:
        code, text = s.denial_reason
        eob["adjudication"] = [{"category": {"coding": [{"system": C4BB_ADJ, "code": "denialreason"}]},
                                "reason": {"coding": [{"system": CARC, "code": code, "display": text}]}}]
        eob["disposition"] = "Claim denied" + (" on appeal" if appeal else "")
    elif appeal == "favorable":
        eob["disposition"] = "Claim paid on appeal"
    if appeal:
        eob["related"] = [{"claim": {"reference": f"Claim/{s.id}-claim"},
                           "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/related-claim-relationship",
                                                        "code": "prior"}]}}]
    return eob
