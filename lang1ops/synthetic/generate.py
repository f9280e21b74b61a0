"""Run the synthetic hospital and write its EHR as a FHIR R4 Bulk Data export.

`generate_hospital(spec, out_dir)` simulates every patient of the catchment from `start` to
`end`, writes one ndjson file per resource type plus a Bulk Data `manifest.json`, and
returns counts. The same spec (name, dates, patients, seed, shift) gives byte-identical
files: every random choice comes from a per-patient `random.Random` seeded by a string
(seeding from a string is stable across processes and platforms), timestamps come from
the simulation, never from the clock, and ids are derived, not random UUIDs.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

from lang1ops.synthetic import fhir as F
from lang1ops.synthetic.catalog import CHRONIC_BY_KEY, PAYERS, REASON_BY_KEY, ShiftEffects
from lang1ops.synthetic.hospital import (
    DISPOSITION_WORDS,
    UTC,
    OutcomeDraw,
    Patient,
    Stay,
    admission_time,
    choose_reason,
    code_status_for,
    denial_reason_for,
    discharge_time,
    disposition_for,
    draw_labs,
    draw_outcomes,
    draw_vitals,
    first_admission,
    make_authors,
    make_patient,
    pick_author,
    unit_for,
)
from lang1ops.synthetic.notes import DischargeFacts, NoteFacts, write_admission_note, write_discharge_summary

RESOURCE_TYPES = ("Organization", "Location", "Practitioner", "Patient", "Coverage", "Encounter", "Condition",
                  "DocumentReference", "Claim", "ExplanationOfBenefit")

COMPLICATIONS = (("delirium", "R41.0"), ("hospital-acquired pneumonia", "J18.9"), ("C. difficile colitis", "A04.72"),
                 ("a fall without injury", "W19.XXXA"), ("acute blood loss anemia", "D62"), ("urinary retention", "R33.9"),
                 ("hypokalemia", "E87.6"), ("atrial fibrillation with RVR", "I48.91"))
PROCEDURES = {"nstemi": "Left heart catheterization with PCI", "gibleed": "EGD with hemostatic clips", "hipfx": "ORIF left hip",
              "tka": "Right total knee arthroplasty", "cabg": "CABG x3", "colectomy": "Laparoscopic right hemicolectomy",
              "appendicitis": "Laparoscopic appendectomy", "csection": "Low transverse cesarean section",
              "hepenceph": "Diagnostic paracentesis", "hyperk": "Hemodialysis", "delivery": "Spontaneous vaginal delivery"}


@dataclass(frozen=True)
class HospitalSpec:
    name: str = "General Hospital"
    start: date = date(2019, 1, 1)
    end: date = date(2024, 12, 31)
    patients: int = 5000
    seed: int = 0
    shift_from: date | None = None  # temporal shift switched on from this date

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "hospital"


@dataclass
class GenerationSummary:
    hospital: str
    patients: int
    encounters: int
    inpatient_stays: int
    notes: int
    resources: dict[str, int]
    out_dir: str


class NdjsonSink:
    """One ndjson file per resource type, written in simulation order."""

    def __init__(self, out_dir: Path):
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self.files = {t: open(out_dir / f"{t}.ndjson", "w", encoding="utf-8", newline="\n") for t in RESOURCE_TYPES}
        self.counts: Counter[str] = Counter()

    def __call__(self, resource: dict) -> None:
        t = resource["resourceType"]
        self.files[t].write(json.dumps(resource, separators=(",", ":"), ensure_ascii=False) + "\n")
        self.counts[t] += 1

    def close(self, spec: HospitalSpec) -> None:
        for f in self.files.values():
            f.close()
        manifest = {
            "transactionTime": f"{spec.end.isoformat()}T23:59:59Z",
            "request": f"https://{spec.slug}.example.org/fhir/$export",
            "requiresAccessToken": False,
            "output": [{"type": t, "url": f"{t}.ndjson", "count": self.counts[t]} for t in RESOURCE_TYPES],
            "error": [],
        }
        (self.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


class HospitalSimulation:
    def __init__(self, spec: HospitalSpec, emit: Callable[[dict], None],
                 on_outcome: Callable[[Stay, OutcomeDraw], None] | None = None):
        # on_outcome sees each stay's outcome draw, latents included (bench/ceiling.py); the export never does
        self.spec, self.emit, self.on_outcome = spec, emit, on_outcome
        self.start = datetime.combine(spec.start, time(0), tzinfo=UTC)
        self.end = datetime.combine(spec.end, time(23, 59, 59), tzinfo=UTC)
        self.shift_at = datetime.combine(spec.shift_from, time(0), tzinfo=UTC) if spec.shift_from else None
        self.effects = ShiftEffects()
        setup_rng = random.Random(f"{spec.seed}:{spec.slug}:setup")
        self.authors = make_authors(setup_rng, spec.slug)
        self.sys = F.Systems(spec.slug)
        self.stays = 0
        self.encounters = 0
        self.notes = 0

    def post_shift(self, when: datetime) -> bool:
        return self.shift_at is not None and when >= self.shift_at

    def write_reference_data(self) -> None:
        for r in F.organizations(self.sys, self.spec.name):
            self.emit(r)
        for r in F.locations(self.sys):
            self.emit(r)
        for a in self.authors:
            self.emit(F.practitioner(self.sys, a))

    def run(self, on_patient: Callable[[], None] | None = None) -> None:
        self.write_reference_data()
        for index in range(self.spec.patients):
            self.simulate_patient(index)
            if on_patient:
                on_patient()

    # --- one patient's history -----------------------------------------------------
    def simulate_patient(self, index: int) -> None:
        rng = random.Random(f"{self.spec.seed}:{self.spec.slug}:patient:{index}")
        first = first_admission(self.start, self.end, rng)
        shift_age = self.effects.age_shift_years if self.post_shift(first) else 0.0
        p = make_patient(index, rng, self.start, shift_age)
        resources: list[dict] = []
        t = first
        while t <= self.end and p.deceased is None:
            stay, next_t = self.simulate_stay(p, t, rng, resources, admit_source="emd")
            if next_t is None:
                break
            t = next_t
        self.emit(F.patient(self.sys, p))
        if p.payer:
            self.emit(F.coverage(self.sys, p))
        for r in resources:
            self.emit(r)

    def simulate_stay(self, p: Patient, t: datetime, rng: random.Random, out: list[dict], admit_source: str,
                      transferred_reason: str | None = None) -> tuple[Stay, datetime | None]:
        post = self.post_shift(t)
        shift = self.effects if post else None
        age = p.age_at(t)
        reason = REASON_BY_KEY[transferred_reason] if transferred_reason else choose_reason(p, age, t, rng, shift)
        # never before the moment the simulation reached (a same-day readmission starts after the discharge)
        admitted = t if admit_source == "hosp-trans" else max(t, admission_time(t, reason.elective, rng))
        acuity = rng.gauss(reason.acuity, 0.7) + 0.3 * p.frailty
        service = reason.service
        unit = unit_for(service, acuity, rng)
        hp_author = pick_author(self.authors, service, rng)
        doc_quality = min(1.0, max(0.0, hp_author.thoroughness + rng.gauss(0, 0.15)))
        stay = Stay(id=f"e{p.index:07d}-{len(p.stays) + 1:02d}", patient=p, reason=reason, service=service, unit=unit, klass="IMP",
                    admitted=admitted, discharged=None, acuity=acuity, elective=reason.elective, admit_source=admit_source,
                    hp_author=hp_author, doc_quality=doc_quality, post_shift=post,
                    prior_auth=(not reason.elective) or rng.random() < 0.45 + 0.5 * doc_quality,
                    facility="sister" if admit_source == "hosp-trans" else "main")
        stay.code_status = code_status_for(age, p, rng)
        outcome = draw_outcomes(p, stay, age, rng, shift)
        if self.on_outcome:
            self.on_outcome(stay, outcome)
        stay.los_days = outcome.los_days
        stay.died = outcome.died
        discharged = discharge_time(admitted, outcome.los_days, outcome.died, rng)
        last = p.stays[-1] if p.stays else None
        facts = self.note_facts(p, stay, age, rng, last)
        # the coded diagnoses of the encounter: principal, most chronic conditions, complications
        stay.coded = [rng.choice(reason.codes)] + [code for key, code in p.conditions.items() if rng.random() < 0.8]
        complications = []
        if not outcome.died:
            n_comp = sum(rng.random() < min(0.6, 0.05 + 0.25 * p.frailty + 0.03 * outcome.los_days) for _ in range(2))
            complications = rng.sample(COMPLICATIONS, n_comp)
            stay.coded += [code for _, code in complications]
        p.stays.append(stay)
        self.stays += 1
        self.encounters += 1

        if discharged > self.end:  # still in hospital when the data was exported
            out.append(F.encounter(self.sys, stay))
            out += F.conditions(self.sys, stay)
            out.append(self.admission_note(stay, facts, rng))
            return stay, None

        stay.discharged = discharged
        stay.disposition = disposition_for(p, stay, age, rng)
        transfer = (not stay.died and acuity > 1.6 and service in ("icu", "neurology", "cardiology") and rng.random() < 0.08)
        if transfer:
            stay.disposition = "other-hcf"
        if stay.died:
            p.deceased = discharged
            if rng.random() < 0.05:  # a data-quality gap real exports have: death time recorded, disposition not
                stay.disposition = "oth"
        self.adjudicate(p, stay, outcome.denied, rng)
        out.append(F.encounter(self.sys, stay))
        out += F.conditions(self.sys, stay)
        out.append(self.admission_note(stay, facts, rng))
        if not stay.died:
            out.append(self.discharge_note(stay, facts, complications, rng))
        if p.payer:
            out += F.claim_and_eobs(self.sys, stay)

        if stay.died:
            return stay, None
        if transfer:
            _, nxt = self.simulate_stay(p, discharged, rng, out, admit_source="hosp-trans", transferred_reason=reason.key)
            return stay, nxt
        self.after_discharge(p, stay, rng, out)
        if p.deceased is not None:
            return stay, None
        if rng.random() < outcome.p_readmit:
            gap = min(30.0, 0.3 + rng.expovariate(1 / 9))
        else:
            gap = 31 + rng.expovariate(1 / (700 * (1.2 - 0.6 * p.frailty)))
        return stay, discharged + timedelta(days=gap)

    def after_discharge(self, p: Patient, stay: Stay, rng: random.Random, out: list[dict]) -> None:
        """Encounters that follow a discharge but are not readmissions, and deaths at home."""
        assert stay.discharged is not None
        base = stay.discharged
        if stay.disposition == "rehab" and rng.random() < 0.6:
            out += self.side_encounter(p, "rehabilitation", base, rng.randint(7, 16), rng, with_summary=True)
        if "rend" in p.conditions and p.conditions["rend"] in ("N18.6", "Z99.2"):
            out += self.side_encounter(p, "dialysis", base + timedelta(days=rng.randint(1, 3)), 0, rng, klass="AMB")
        if rng.random() < 0.07:
            out += self.side_encounter(p, "emergency", base + timedelta(days=rng.uniform(1, 29)), 0, rng, klass="EMER")
        if stay.disposition == "hosp" and rng.random() < 0.7:
            p.deceased = base + timedelta(days=rng.uniform(2, 45))
        elif rng.random() < 0.004 + 0.02 * p.frailty:
            p.deceased = base + timedelta(days=rng.uniform(1, 200))
        if p.deceased is not None and p.deceased > self.end:
            p.deceased = None

    def side_encounter(self, p: Patient, service: str, when: datetime, days: int, rng: random.Random, klass: str = "IMP",
                       with_summary: bool = False) -> list[dict]:
        if when > self.end:
            return []
        end = when + timedelta(days=days, hours=rng.uniform(1, 6))
        stay = Stay(id=f"e{p.index:07d}-{len(p.stays) + 1:02d}", patient=p, reason=REASON_BY_KEY["fall"], service=service,
                    unit="Acute Rehab Unit" if service == "rehabilitation" else "Dialysis Center" if service == "dialysis" else "Emergency Department",
                    klass=klass, admitted=when, discharged=end if end <= self.end else None, disposition="home")
        p.stays.append(stay)
        self.encounters += 1
        out = [F.encounter(self.sys, stay)]
        if with_summary and stay.discharged:
            author = pick_author(self.authors, "medicine", rng)
            text = (f"REHABILITATION DISCHARGE SUMMARY\n\nAdmission date: {when:%m/%d/%Y}    Discharge date: {end:%m/%d/%Y}\n"
                    f"Completed a course of acute inpatient rehabilitation with PT/OT {rng.choice(('5', '6'))} days per week.\n"
                    f"Functional status improved from {rng.choice(('max', 'mod'))} assist to {rng.choice(('min assist', 'supervision'))}.\n"
                    "Discharged home with outpatient therapy.\n" + " ".join(["Therapy notes reviewed."] * rng.randint(60, 120)) + "\n"
                    f"{author.name}, {author.credentials}\n")
            out.append(F.document(self.sys, stay, "ds", text, end, author))
            self.notes += 1
        return out

    # --- notes ---------------------------------------------------------------------
    def note_facts(self, p: Patient, stay: Stay, age: int, rng: random.Random, last: Stay | None) -> NoteFacts:
        author = stay.hp_author
        assert author is not None
        mention_p = 0.3 + 0.45 * author.thoroughness
        mentioned = [CHRONIC_BY_KEY[k] for k in p.conditions if rng.random() < mention_p]
        rng.shuffle(mentioned)
        home_drugs = [d for c in mentioned for d in c.drugs if rng.random() < 0.8]
        # drugs betray conditions the author did not list
        home_drugs += [d for k in p.conditions for d in CHRONIC_BY_KEY[k].drugs[:1]
                       if CHRONIC_BY_KEY[k] not in mentioned and rng.random() < 0.35]
        recent = [s for s in p.stays if s.discharged and (stay.admitted - s.admitted).days < 183 and s.klass == "IMP"]
        since = (stay.admitted - last.discharged).days if last and last.discharged and last.klass == "IMP" else None
        function = ("independent" if p.frailty < 0.35 else "uses a cane" if p.frailty < 0.55 else
                    rng.choice(("walker at baseline", "wheelchair-bound", "needs assistance with ADLs")))
        absent = [c for c in CHRONIC_BY_KEY.values() if c.key not in p.conditions and c.charlson]
        negated = rng.sample(absent, k=min(len(absent), rng.choice((0, 0, 1, 2))))
        return NoteFacts(
            negated=negated,
            age=age, sex=p.sex, reason=stay.reason, acuity=stay.acuity, mentioned=mentioned, home_drugs=home_drugs,
            social=min(1.0, max(0.0, p.social + rng.gauss(0, 0.15))), frailty=min(1.0, max(0.0, p.frailty + rng.gauss(0, 0.15))),
            lives=p.lives, tobacco=p.tobacco, etoh=p.etoh, drugs=p.drugs, function=function,
            prior_admissions_6mo=len(recent), days_since_last_discharge=since, code_status=stay.code_status,
            doc_quality=stay.doc_quality, elective=stay.elective, prior_auth=stay.prior_auth, unit=stay.unit,
            post_shift=stay.post_shift, admitted=stay.admitted,
            labs=draw_labs(stay.reason, stay.acuity, rng), vitals=draw_vitals(stay.reason, stay.acuity, rng))

    def vocabulary(self, post_shift: bool, author) -> tuple[bool, float]:
        new_template = post_shift and not author.keeps_old_template
        return new_template, (0.75 if post_shift else 0.03)

    def admission_note(self, stay: Stay, facts: NoteFacts, rng: random.Random) -> dict:
        author = stay.hp_author
        new_template, vocab = self.vocabulary(stay.post_shift, author)
        text = write_admission_note(facts, author, rng, new_template, vocab)
        self.notes += 1
        written = stay.admitted + timedelta(hours=rng.uniform(1, 10))
        return F.document(self.sys, stay, "hp", text, written, author)

    def discharge_note(self, stay: Stay, facts: NoteFacts, complications: list[tuple[str, str]], rng: random.Random) -> dict:
        assert stay.discharged is not None and stay.disposition is not None
        author = pick_author(self.authors, stay.service, rng)
        stay.ds_author = author
        post = self.post_shift(stay.discharged)
        new_template, vocab = self.vocabulary(post, author)
        dfacts = DischargeFacts(
            admission=facts, discharged=stay.discharged,
            disposition=rng.choice(DISPOSITION_WORDS.get(stay.disposition, ("home",))),
            complications=[c for c, _ in complications], secondary_codes_text=[],
            procedures=[PROCEDURES[stay.reason.key]] if stay.reason.key in PROCEDURES else [],
            new_meds=list(stay.reason.new_meds),
            follow_up_scheduled=rng.random() < 0.35 + 0.55 * author.thoroughness - 0.25 * stay.patient.social,
            against_advice=stay.disposition == "aadvice")
        text = write_discharge_summary(dfacts, author, rng, new_template, vocab)
        self.notes += 1
        return F.document(self.sys, stay, "ds", text, stay.discharged, author)

    # --- claims ----------------------------------------------------------------------
    def adjudicate(self, p: Patient, stay: Stay, denied: bool, rng: random.Random) -> None:
        if not p.payer or stay.discharged is None:
            return
        decided = stay.discharged + timedelta(days=rng.uniform(14, 75))
        if decided > self.end:
            return  # the payer has not answered yet: no label
        stay.adjudicated = decided
        stay.denied = denied
        if stay.denied:
            stay.denial_reason = denial_reason_for(stay, rng)
            if rng.random() < APPEAL_RATE:
                stay.appeal = "favorable" if rng.random() < 0.55 else "adverse"


# Share of denials the hospital appeals to a final determination: most inpatient denials are
# appealed, and the paper's label (denied, then decided on appeal) needs the appeals to reach
# its 12-14% prevalence (DENIAL_INTERCEPT is set with it).
APPEAL_RATE = 0.9


def generator_fingerprint() -> str:
    """Hash of the generator's own source: output made by other code is not 'the same spec'."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def generate_hospital(spec: HospitalSpec, out_dir: Path, on_patient: Callable[[], None] | None = None) -> GenerationSummary:
    sink = NdjsonSink(Path(out_dir))
    sim = HospitalSimulation(spec, sink)
    try:
        sim.run(on_patient)
    finally:
        sink.close(spec)
    summary = GenerationSummary(hospital=spec.name, patients=spec.patients, encounters=sim.encounters, inpatient_stays=sim.stays,
                                notes=sim.notes, resources=dict(sink.counts), out_dir=str(out_dir))
    info = {"generator": "lang1ops.synthetic", "generator_fingerprint": generator_fingerprint(), "spec": {k: (v.isoformat() if isinstance(v, date) else v) for k, v in asdict(spec).items()},
            "summary": asdict(summary) | {"out_dir": None}}
    (Path(out_dir) / "generation.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return summary


__all__ = ["HospitalSpec", "GenerationSummary", "generate_hospital", "PAYERS"]
