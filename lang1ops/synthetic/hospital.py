"""The latent patient model: who is admitted, why, and what happens to them.

Each patient carries a latent state (age, sex, payer, chronic conditions, frailty, social
risk). Each stay adds an admission reason, an acuity and the author who writes the notes.
Outcomes are drawn from that state plus noise the notes never see: LOS from a log-normal,
in-hospital death, 30-day readmission (realised as an actual later encounter), and the
payer's decision on the claim. Readmission, mortality and LOS are never written down; the
label pipeline must derive them from the encounters, as it would for a real hospital.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from lang1ops.synthetic.catalog import (
    CHRONIC,
    CHRONIC_BY_KEY,
    DENIAL_REASONS,
    ETHNICITIES,
    FIRST_NAMES_F,
    FIRST_NAMES_M,
    LAST_NAMES,
    RACES,
    REASONS,
    UNITS,
    AdmissionReason,
    ChronicCondition,
    ShiftEffects,
)
from lang1ops.synthetic.notes import EXTRA_LABS, LABS, Author

# Intercepts tuned so that prevalences land near the paper's appendix B (docs/data.md).
MORTALITY_INTERCEPT = -6.6
READMIT_INTERCEPT = -4.4
DENIAL_INTERCEPT = -2.8
LOS_SIGMA = 0.6


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@dataclass
class Patient:
    index: int
    id: str
    mrn: str
    given: str
    family: str
    sex: str
    birth_date: date
    race: tuple[str, str]
    ethnicity: tuple[str, str]
    payer: str | None  # None: self-pay
    social: float
    frailty: float
    conditions: dict[str, str]  # chronic key -> ICD-10-CM code
    lives: str
    tobacco: str
    etoh: str
    drugs: str
    deceased: datetime | None = None
    stays: list[Stay] = field(default_factory=list)

    def age_at(self, when: datetime) -> int:
        d = when.date()
        return d.year - self.birth_date.year - ((d.month, d.day) < (self.birth_date.month, self.birth_date.day))


@dataclass
class Stay:
    id: str
    patient: Patient
    reason: AdmissionReason
    service: str
    unit: str
    klass: str  # IMP | EMER | AMB
    admitted: datetime
    discharged: datetime | None  # None: still in hospital at the end of the data
    acuity: float = 0.0
    elective: bool = False
    died: bool = False
    disposition: str | None = None  # FHIR discharge-disposition code
    admit_source: str = "emd"
    hp_author: Author | None = None
    ds_author: Author | None = None
    doc_quality: float = 0.5
    prior_auth: bool = True
    coded: list[str] = field(default_factory=list)  # ICD-10-CM codes on the encounter
    denied: bool | None = None  # None: no claim decision in the data
    denial_reason: tuple[str, str] | None = None
    appeal: str | None = None  # "favorable" | "adverse" | None
    adjudicated: datetime | None = None
    post_shift: bool = False
    code_status: str = "Full code"
    transfer_to: str | None = None  # organization key when transferred out
    facility: str = "main"
    los_days: int = 0


def make_patient(index: int, rng: random.Random, start: datetime, shift_age: float) -> Patient:
    sex = "female" if rng.random() < 0.53 else "male"
    # Adult inpatients: young adults (obstetrics, surgery), middle age, and the elderly
    band = rng.random()
    if band < 0.28:
        age = rng.uniform(18, 45)
    elif band < 0.58:
        age = rng.uniform(45, 65)
    else:
        age = min(99.0, 65 + rng.expovariate(1 / 11))
    age += shift_age
    birth = (start - timedelta(days=age * 365.25)).date()
    race = rng.choices(RACES, weights=[w for *_, w in RACES])[0][:2]
    eth = rng.choices(ETHNICITIES, weights=[w for *_, w in ETHNICITIES])[0][:2]
    if age >= 65:
        payer = "medicare" if rng.random() < 0.62 else ("medicare_advantage" if rng.random() < 0.8 else "commercial")
    else:
        u = rng.random()
        payer = "medicaid" if u < 0.27 else "commercial" if u < 0.62 else "commercial_b" if u < 0.90 else None
    social = min(1.0, max(0.0, rng.betavariate(1.6, 4.0) + (0.2 if payer in ("medicaid", None) else 0.0)))
    decades = (age - 40) / 10
    # multimorbidity clusters: one latent burden raises every Charlson condition together,
    # which gives the long right tail of real comorbidity scores
    burden = rng.gauss(0, 1)
    conditions: dict[str, str] = {}
    for c in CHRONIC:
        if c.requires and c.requires not in conditions:
            continue
        base = c.base_prevalence if not c.requires else min(0.5, c.base_prevalence * 12)
        logit = math.log(base / (1 - base)) + c.age_slope * decades
        if c.key in ("etoh", "tobacco", "aids"):
            logit += 1.2 * social
        if c.charlson:
            logit += 1.3 * burden - 0.7
        if rng.random() < sigmoid(logit):
            conditions[c.key] = rng.choice(c.codes)
    frailty = min(1.0, max(0.0, 0.03 * max(0.0, age - 55) / 3 + sum(CHRONIC_BY_KEY[k].frailty for k in conditions)
                           + rng.gauss(0, 0.12)))
    lives = rng.choice(("with spouse", "with family", "with daughter", "alone")) if social < 0.55 else rng.choice(
        ("alone", "alone", "in a shelter", "with a friend", "in supportive housing"))
    if frailty > 0.7 and rng.random() < 0.4:
        lives = "in a nursing facility"
    tobacco = (f"current smoker, {rng.randint(10, 60)} pack-years" if "tobacco" in conditions else
               rng.choice(("never", "never smoker", f"former, quit {rng.randint(2, 30)} years ago")))
    etoh = (rng.choice(("6-8 beers daily", "a pint of vodka daily", "heavy daily use")) if "etoh" in conditions else
            rng.choice(("denies", "social", "occasional wine", "none")))
    drugs = rng.choice(("denies", "denies", "remote cannabis", "none")) if social < 0.7 else rng.choice(
        ("denies", "cannabis daily", "history of IV heroin use, in remission", "cocaine use"))
    given = rng.choice(FIRST_NAMES_F if sex == "female" else FIRST_NAMES_M)
    return Patient(index, f"p{index:07d}", f"MRN{4_000_000 + index * 7:08d}", given, rng.choice(LAST_NAMES), sex, birth,
                   race, eth, payer, social, frailty, conditions, lives, tobacco, etoh, drugs)


def choose_reason(p: Patient, age: int, when: datetime, rng: random.Random, shift: ShiftEffects | None) -> AdmissionReason:
    weights = []
    for r in REASONS:
        w = r.weight
        if r.from_year and when.year < r.from_year:
            w = 0.0
        elif r.key == "covid":
            # waves: 2020-2021 large, smaller afterwards
            w = 6.0 if when.year in (2020, 2021) else 2.0 if when.year == 2022 else 0.8
        if age < r.min_age or age > r.max_age or (r.female_only and p.sex != "female"):
            w = 0.0
        if r.key in ("delivery", "csection"):
            w *= 2.2
        # the first favoured condition defines the reason (CHF for a CHF exacerbation);
        # the others are risk factors that raise it modestly
        for i, key in enumerate(r.favours):
            if key in p.conditions:
                w *= 6.0 if i == 0 else 1.4
        if age >= 70 and r.key in ("fall", "hipfx", "sepsis", "uti", "chf", "pneumonia"):
            w *= 1.8
        if shift:
            w *= shift.reason_weights.get(r.key, 1.0)
        weights.append(w)
    return rng.choices(REASONS, weights=weights)[0]


def draw_labs(reason: AdmissionReason, acuity: float, rng: random.Random) -> dict[str, float]:
    scale = max(0.3, 1 + 0.5 * acuity)
    out = {}
    for key, (_, _, mean, sd, _, _) in LABS.items():
        shift = reason.labs.get(key, 0.0) * scale
        out[key] = max(0.0, mean + sd * (shift + rng.gauss(0, 0.8)))
    for key in reason.labs:
        if key in EXTRA_LABS:
            _, _, mean, sd, _, _ = EXTRA_LABS[key]
            out[key] = max(0.0, mean + sd * (reason.labs[key] * scale + rng.gauss(0, 0.8)))
    return out


def draw_vitals(reason: AdmissionReason, acuity: float, rng: random.Random) -> dict[str, float]:
    febrile = reason.key in ("pneumonia", "sepsis", "uti", "cellulitis", "neutropenic", "covid")
    resp = reason.key in ("chf", "copd", "pneumonia", "covid", "pe", "sepsis")
    sbp = 132 - (14 * acuity if reason.key in ("sepsis", "gibleed") else -4 * acuity) + rng.gauss(0, 14)
    return {
        "t": 36.8 + (1.1 + 0.3 * acuity if febrile and rng.random() < 0.75 else 0.0) + rng.gauss(0, 0.3),
        "hr": 82 + 11 * acuity + rng.gauss(0, 10),
        "sbp": sbp,
        "dbp": sbp * 0.58 + rng.gauss(0, 6),
        "rr": 16 + (3 * acuity if resp else 1.2 * acuity) + rng.gauss(0, 2),
        "spo2": min(100.0, 97 - (3.2 * max(acuity, 0) if resp else 0.6 * max(acuity, 0)) + rng.gauss(0, 1.2)),
    }


@dataclass(frozen=True)
class OutcomeLatents:
    """What the draw knew, for the ceiling benchmark (bench/ceiling.py); never exported.

    `*_full` is the logit (or log-LOS mean) the outcome was drawn from: the hidden severity and
    the stay's own noise included, so only the final coin flip is left. `*_seen` leaves out the
    hidden severity and the noise terms, keeping every other input of the formula: the most that
    any reader of the whole record could know, and more than a single note shows (acuity, frailty
    and social risk reach the notes only through noisy vitals, labs and phrases).
    """

    mortality_full: float
    mortality_seen: float
    readmission_full: float
    readmission_seen: float
    denial_full: float
    denial_seen: float
    log_los_full: float  # before the log-normal noise (sd LOS_SIGMA)
    log_los_seen: float  # hidden severity left out too (sd LOS_SEEN_SIGMA)


@dataclass
class OutcomeDraw:
    los_days: int
    died: bool
    p_readmit: float
    denied: bool
    p_denial: float
    latents: OutcomeLatents


HIDDEN_LOS, HIDDEN_MORTALITY, HIDDEN_READMIT = 0.22, 0.5, 0.35  # weights of the hidden severity
LOS_SEEN_SIGMA = math.hypot(LOS_SIGMA, HIDDEN_LOS)
LOS_LOG_OFFSET = 0.15  # days = int(exp(log-LOS - offset))


def draw_outcomes(p: Patient, stay: Stay, age: int, rng: random.Random, shift: ShiftEffects | None) -> OutcomeDraw:
    r = stay.reason
    n_charlson = sum(1 for k in p.conditions if CHRONIC_BY_KEY[k].charlson)
    metastatic = "metacanc" in p.conditions
    # An unobserved severity that the H&P does not show drives all outcomes of the stay.
    hidden = rng.gauss(0, 1)
    # The random draws keep their order (hidden, LOS noise, death, readmission noise, denial
    # noise, denial): the same spec still gives byte-identical files.
    log_los_seen = (r.log_los + 0.16 * stay.acuity + 0.35 * p.frailty + 0.2 * p.social + 0.05 * n_charlson
                    + (0.06 * (age - 60) / 10 if age > 60 else 0.0) + (shift.log_los_offsets.get(r.key, 0.0) if shift else 0.0))
    log_los_full = log_los_seen + HIDDEN_LOS * hidden
    los_days = max(0, int(math.exp(log_los_full + rng.gauss(0, LOS_SIGMA) - LOS_LOG_OFFSET)))
    mortality_seen = (MORTALITY_INTERCEPT + r.mortality + 1.05 * stay.acuity + 0.045 * (age - 60) + 1.5 * p.frailty
                      + (1.3 if metastatic else 0.0)
                      + (shift.mortality_intercept + shift.mortality_offsets.get(r.key, 0.0) if shift else 0.0))
    mortality_full = mortality_seen + HIDDEN_MORTALITY * hidden
    died = rng.random() < sigmoid(mortality_full)
    social_weight = 2.4 * (shift.social_readmit_scale if shift else 1.0)
    readmit_seen = (READMIT_INTERCEPT + r.readmit + 0.3 * n_charlson + 2.2 * p.frailty + social_weight * p.social
                    + (0.4 if los_days > 5 else 0.0) + (0.8 if metastatic else 0.0)
                    + 0.45 * min(3, len([s for s in p.stays if (stay.admitted - s.admitted).days < 180]))
                    + (shift.readmit_intercept + shift.readmit_offsets.get(r.key, 0.0) if shift else 0.0))
    readmit_full = readmit_seen + HIDDEN_READMIT * hidden + rng.gauss(0, 0.4)
    denial_seen = (DENIAL_INTERCEPT + r.denial + 2.6 * (0.6 - stay.doc_quality)
                   + {"medicaid": 0.35, "commercial": 0.45, "commercial_b": 0.1, "medicare_advantage": 0.55}.get(p.payer or "", 0.0)
                   + (1.8 if stay.elective and not stay.prior_auth else 0.0) + (0.6 if los_days <= 1 else 0.0)
                   + (shift.denial_intercept + (shift.short_stay_denial if los_days <= 2 else 0.0) if shift else 0.0))
    denial_full = denial_seen + rng.gauss(0, 0.4)
    p_denial = sigmoid(denial_full)
    latents = OutcomeLatents(mortality_full, mortality_seen, readmit_full, readmit_seen, denial_full, denial_seen,
                             log_los_full, log_los_seen)
    return OutcomeDraw(los_days, died, sigmoid(readmit_full), rng.random() < p_denial, p_denial, latents)


def disposition_for(p: Patient, stay: Stay, age: int, rng: random.Random) -> str:
    if stay.died:
        return "exp"
    if p.social > 0.6 and rng.random() < 0.07:
        return "aadvice"
    if "metacanc" in p.conditions and rng.random() < 0.25:
        return "hosp"
    if p.frailty > 0.55 or (age > 75 and stay.reason.key in ("hipfx", "stroke", "fall", "sepsis")):
        return rng.choices(("snf", "rehab", "home", "alt-home"), weights=(0.45, 0.2, 0.25, 0.1))[0]
    if stay.reason.key in ("hipfx", "stroke") and rng.random() < 0.5:
        return "rehab"
    return "home" if rng.random() < 0.85 else "alt-home"


DISPOSITION_WORDS = {
    "home": ("home", "home with family", "home, self-care"),
    "alt-home": ("home with home health services", "home with VNA", "home with home PT"),
    "snf": ("skilled nursing facility", "SNF for short-term rehab", "subacute rehab (SNF)"),
    "rehab": ("acute inpatient rehabilitation", "inpatient rehab facility"),
    "hosp": ("home hospice", "hospice"),
    "aadvice": ("left against medical advice",),
    "other-hcf": ("transferred to another acute care hospital",),
}


def code_status_for(age: int, p: Patient, rng: random.Random) -> str:
    x = -5.5 + 0.055 * age + 1.6 * p.frailty + (1.5 if "metacanc" in p.conditions else 0.0) + (1.0 if "dementia" in p.conditions else 0.0)
    if rng.random() < sigmoid(x):
        return rng.choice(("DNR/DNI", "DNR", "DNR/DNI, MOLST on file", "comfort-focused, DNR"))
    return rng.choice(("Full code", "Full code (presumed)", "FULL"))


SERVICE_ROLES = {
    "surgery": ("Surgery",), "orthopedics": ("Surgery",), "obstetrics": ("Obstetrics",), "neurology": ("Neurology", "Hospital Medicine"),
    "oncology": ("Oncology", "Hospital Medicine"), "icu": ("Critical Care",), "cardiology": ("Cardiology", "Hospital Medicine"),
}
GENERAL_ROLES = ("Hospital Medicine", "Internal Medicine Resident", "Nurse Practitioner, Hospital Medicine")


def pick_author(authors: list[Author], service: str, rng: random.Random) -> Author:
    roles = SERVICE_ROLES.get(service, GENERAL_ROLES)
    pool = [a for a in authors if a.role in roles]
    return rng.choice(pool or authors)


def make_authors(rng: random.Random, hospital: str, n: int = 60) -> list[Author]:
    roles = ("Hospital Medicine", "Hospital Medicine", "Internal Medicine Resident", "Nurse Practitioner, Hospital Medicine",
             "Surgery", "Obstetrics", "Cardiology", "Neurology", "Oncology", "Critical Care")
    out = []
    for i in range(n):
        role = roles[i % len(roles)]
        cred = "NP" if "Nurse" in role else rng.choice(("MD", "MD", "DO"))
        out.append(Author(
            id=f"{hospital}-pr{i:03d}",
            name=f"{rng.choice(FIRST_NAMES_F + FIRST_NAMES_M)} {rng.choice(LAST_NAMES)}",
            credentials=cred, role=role,
            abbrev=rng.betavariate(2, 2), verbosity=rng.uniform(0.7, 1.8), thoroughness=rng.betavariate(3, 2),
            section_style=rng.randrange(3), ap_style=rng.randrange(3), lab_style=rng.randrange(2),
            keeps_old_template=rng.random() < 0.1,
        ))
    return out


def unit_for(service: str, acuity: float, rng: random.Random) -> str:
    if service in ("medicine", "cardiology") and acuity > 1.6 and rng.random() < 0.5:
        return "MICU"
    return rng.choice(UNITS[service])


def denial_reason_for(stay: Stay, rng: random.Random) -> tuple[str, str]:
    if stay.elective and not stay.prior_auth:
        return DENIAL_REASONS[1]
    if stay.los_days <= 1:
        return DENIAL_REASONS[4]
    if stay.doc_quality < 0.4:
        return rng.choice((DENIAL_REASONS[0], DENIAL_REASONS[2]))
    return rng.choice(DENIAL_REASONS[:4])


def first_admission(start: datetime, end: datetime, rng: random.Random) -> datetime:
    span = (end - start).total_seconds()
    return start + timedelta(seconds=rng.random() * span)


def admission_time(day: datetime, elective: bool, rng: random.Random) -> datetime:
    d = datetime(day.year, day.month, day.day, tzinfo=UTC)
    if elective:
        return d + timedelta(hours=rng.choice((6, 7)), minutes=rng.choice((0, 15, 30)))
    # emergency admissions cluster in the afternoon and evening
    return d + timedelta(hours=min(23.9, max(0.0, rng.gauss(16, 5))))


def discharge_time(admitted: datetime, los_days: int, died: bool, rng: random.Random) -> datetime:
    day = datetime(admitted.year, admitted.month, admitted.day, tzinfo=UTC) + timedelta(days=los_days)
    hour = rng.uniform(0, 24) if died else min(23.5, max(8.0, rng.gauss(13, 2.5)))
    out = day + timedelta(hours=hour)
    return max(out, admitted + timedelta(hours=3))


def chronic(key: str) -> ChronicCondition:
    return CHRONIC_BY_KEY[key]
