"""Admission H&Ps and discharge summaries written the way different clinicians write them.

A note is built from what a clinician knows when writing it (history, exam, labs, the
working diagnosis), never from the outcome: LOS, death, readmission and the claim's fate
are drawn afterwards from the latent state, so the notes reflect that state only partly
and noisily. Authors differ in abbreviation habits, section headers, verbosity and
thoroughness; thoroughness is also the documentation completeness payers look at.
After the shift date most authors move to a new (ambient-AI-assisted) template with a
long conversational HPI, and newer drug and disease names replace the old ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime

from lang1ops.synthetic.catalog import AdmissionReason, ChronicCondition, Drug

SECTION_STYLES = (
    {"cc": "CC:", "hpi": "HPI:", "pmh": "PMH:", "psh": "PSH:", "meds": "Meds:", "all": "Allergies:", "sh": "SH:", "fh": "FH:",
     "ros": "ROS:", "pe": "PE:", "labs": "Labs:", "img": "Imaging:", "ap": "A/P:"},
    {"cc": "Chief Complaint:", "hpi": "History of Present Illness:", "pmh": "Past Medical History:", "psh": "Past Surgical History:",
     "meds": "Home Medications:", "all": "Allergies:", "sh": "Social History:", "fh": "Family History:", "ros": "Review of Systems:",
     "pe": "Physical Exam:", "labs": "Laboratory Data:", "img": "Imaging/Studies:", "ap": "Assessment and Plan:"},
    {"cc": "CHIEF COMPLAINT", "hpi": "HISTORY OF PRESENT ILLNESS", "pmh": "PAST MEDICAL HISTORY", "psh": "PAST SURGICAL HISTORY",
     "meds": "OUTPATIENT MEDICATIONS", "all": "ALLERGIES", "sh": "SOCIAL HISTORY", "fh": "FAMILY HISTORY", "ros": "REVIEW OF SYSTEMS",
     "pe": "PHYSICAL EXAMINATION", "labs": "LABS", "img": "RADIOLOGY", "ap": "ASSESSMENT & PLAN"},
)
# The post-shift template (ambient documentation tool) renames and reorders sections.
NEW_TEMPLATE = {"cc": "Reason for Admission:", "hpi": "Subjective / History of Present Illness:", "pmh": "Active Problem List:",
                "psh": "Surgical History:", "meds": "Prior to Admission Medications:", "all": "Allergies (reviewed):",
                "sh": "Social Determinants of Health:", "fh": "Family History:", "ros": "Review of Systems:",
                "pe": "Objective:", "labs": "Results:", "img": "Imaging:", "ap": "Clinical Impression and Plan:"}

AMBIENT_DISCLAIMER = (
    "This note was drafted with the assistance of an ambient listening documentation tool and was reviewed and "
    "edited by the signing clinician. The patient verbally consented to the use of ambient technology during the visit. "
    "Portions of this note may have been generated from the conversation and are subject to transcription variance."
)

# Common lab panel: name -> (short, long, mean, sd, unit, decimals)
LABS: dict[str, tuple[str, str, float, float, str, int]] = {
    "na": ("Na", "Sodium", 138, 3, "mmol/L", 0),
    "k": ("K", "Potassium", 4.1, 0.4, "mmol/L", 1),
    "cl": ("Cl", "Chloride", 102, 3, "mmol/L", 0),
    "co2": ("HCO3", "Bicarbonate", 24, 2.5, "mmol/L", 0),
    "bun": ("BUN", "BUN", 17, 6, "mg/dL", 0),
    "cr": ("Cr", "Creatinine", 1.0, 0.25, "mg/dL", 2),
    "glu": ("Glu", "Glucose", 115, 25, "mg/dL", 0),
    "wbc": ("WBC", "WBC", 8.0, 2.2, "K/uL", 1),
    "hgb": ("Hgb", "Hemoglobin", 12.8, 1.4, "g/dL", 1),
    "plt": ("Plt", "Platelets", 240, 55, "K/uL", 0),
}
EXTRA_LABS: dict[str, tuple[str, str, float, float, str, int]] = {
    "lactate": ("Lactate", "Lactic acid", 1.2, 0.4, "mmol/L", 1),
    "trop": ("Trop", "Troponin I", 0.01, 0.01, "ng/mL", 2),
    "bnp": ("BNP", "BNP", 120, 90, "pg/mL", 0),
    "bili": ("Tbili", "Total bilirubin", 0.8, 0.3, "mg/dL", 1),
    "inr": ("INR", "INR", 1.1, 0.1, "", 1),
    "lipase": ("Lipase", "Lipase", 40, 15, "U/L", 0),
    "crp": ("CRP", "C-reactive protein", 8, 5, "mg/L", 0),
    "mcv": ("MCV", "MCV", 90, 5, "fL", 0),
}
IMAGING = {
    "chf": "CXR with cephalization and small bilateral effusions", "copd": "CXR hyperinflated, no focal consolidation",
    "pneumonia": "CXR with right lower lobe consolidation", "sepsis": "CXR without consolidation; CT abdomen/pelvis pending",
    "nstemi": "EKG with lateral ST depressions", "stroke": "CT head without hemorrhage; CTA with left M2 occlusion",
    "pe": "CTA chest with segmental PE", "sbo": "CT with dilated small bowel loops and transition point",
    "appendicitis": "CT with dilated appendix and periappendiceal fat stranding", "hipfx": "Hip XR with intertrochanteric fracture",
    "pancreatitis": "CT with peripancreatic fat stranding", "hepenceph": "RUQ US with nodular liver and moderate ascites",
    "covid": "CXR with bilateral patchy opacities", "afrvr": "EKG atrial fibrillation with rate 140s", "syncope": "EKG sinus rhythm, normal intervals",
    "chestpain": "EKG without ischemic changes",
}
# Details clinicians add to a problem list entry; several carry severity (EF, home O2, A1c).
CONDITION_DETAILS: dict[str, tuple[str, ...]] = {
    "chf": ("EF {ef}% on TTE {yr}", "followed in heart failure clinic", "dry weight {wt} kg", "NYHA class {nyha}"),
    "diab": ("last A1c {a1c}%", "diet-controlled", "on oral agents", "complicated by hypoglycemia"),
    "diabwc": ("on insulin", "with microalbuminuria", "last A1c {a1c}%"),
    "rend": ("baseline Cr {cr}", "followed by nephrology", "not yet on dialysis", "MWF dialysis via left AVF"),
    "copd": ("on {o2}L home O2", "FEV1 {fev}% predicted", "last exacerbation {mo} months ago", "never intubated"),
    "afib": ("CHA2DS2-VASc {n}", "rate controlled", "s/p ablation {yr}"),
    "mld": ("MELD {meld}", "followed by hepatology", "no prior decompensation"),
    "msld": ("s/p banding {yr}", "with ascites requiring paracentesis", "MELD {meld}"),
    "canc": ("s/p resection {yr}", "on active chemotherapy", "followed by Dr. {name} in oncology", "in remission"),
    "metacanc": ("on palliative chemotherapy", "stage IV", "followed by palliative care"),
    "dementia": ("MoCA {moca}/30", "oriented to self only at baseline", "lives with caregiver"),
    "cevd": ("residual left-sided weakness", "no residual deficits", "{yr}"),
    "htn": ("well controlled", "on 2 agents", "poorly controlled"),
    "ami": ("s/p PCI to RCA {yr}", "s/p DES x2 {yr}"),
}
HPI_CONTEXT = (
    "Patient was in usual state of health until {d} days prior to presentation.",
    "Collateral history obtained from {who}, who is at bedside.",
    "PCP is Dr. {name} at the {clinic} clinic; last visit {mo} months ago.",
    "Patient reports adherence to medications, although admits to missing doses occasionally.",
    "No recent travel, sick contacts or new medications.",
    "Symptoms were not relieved by rest or over-the-counter medications.",
    "Patient initially presented to urgent care and was referred to the ED.",
    "Of note, outpatient labs last month were unremarkable per chart review.",
    "The patient was seen in clinic {d} days ago and was prescribed a short course of medication without improvement.",
    "History is limited by the patient's fatigue; further history obtained from chart review.",
)
ROS_DETAILED = ("Constitutional: {c}. Eyes: no vision changes. ENT: no sore throat. Cardiovascular: {cv}. Respiratory: {r}. "
                "Gastrointestinal: {gi}. Genitourinary: no dysuria or hematuria. Musculoskeletal: no joint swelling. "
                "Skin: no rashes. Neurologic: no headache, no focal weakness. Psychiatric: no SI/HI. Endocrine: no polyuria. "
                "Heme/Lymph: no easy bruising. All other systems reviewed and negative.")
ED_COURSE = (
    "In the ED, initial vitals were T {t}, HR {hr}, BP {bp}, RR {rr}, SpO2 {spo2}%.",
    "Labs in the ED were notable for {labs}.",
    "{img}.",
    "Received {ed_tx} in the ED with {resp} response.",
    "ED physician discussed the case with the admitting team, and the patient was accepted for admission to {unit}.",
    "Repeat vitals prior to transfer to the floor were stable.",
)
DATA_REVIEWED = (
    "Prior echocardiogram ({yr}) reviewed: EF {ef}%, no significant valvular disease.",
    "Outside hospital records reviewed and summarized above.",
    "EKG personally reviewed: sinus rhythm, rate {hr}, no acute ST changes compared with prior.",
    "Prior discharge summary reviewed in detail.",
    "Medication list reconciled with outpatient pharmacy fill history.",
    "Prior imaging reviewed: stable chronic findings, no new abnormality compared with {yr}.",
    "Discussed with the patient's outpatient {spec} regarding recent changes to the regimen.",
)
EXAM_DETAIL = {
    "HEENT": ("normocephalic, atraumatic, MMM, anicteric sclerae", "PERRL, EOMI, oropharynx clear", "dry mucous membranes"),
    "Neck": ("supple, no JVD, no lymphadenopathy", "no thyromegaly", "JVP not elevated"),
    "CV": ("RRR, normal S1/S2, no murmurs, rubs or gallops", "regular rhythm, 2/6 systolic murmur at RUSB", "tachycardic, regular"),
    "Lungs": ("clear to auscultation bilaterally, no wheezes or crackles", "good air movement, no increased work of breathing",
              "faint bibasilar crackles"),
    "Abd": ("soft, non-tender, non-distended, normoactive bowel sounds", "obese, soft, non-tender", "mild diffuse tenderness, no rebound"),
    "Ext": ("warm and well perfused, no edema", "trace bilateral ankle edema", "no calf tenderness, pulses 2+ bilaterally"),
    "Neuro": ("alert and oriented x3, CN II-XII intact, strength 5/5 throughout", "A&Ox3, moving all extremities",
              "oriented to person and place only"),
    "Skin": ("warm, dry, no rashes", "no pressure injuries noted on skin check", "scattered ecchymoses on the forearms"),
    "Psych": ("appropriate mood and affect", "anxious but cooperative"),
}
DIFFERENTIALS = {
    "chf": ("ACS", "pneumonia", "COPD exacerbation", "nephrotic syndrome"), "copd": ("pneumonia", "CHF", "PE", "viral bronchitis"),
    "pneumonia": ("viral syndrome", "aspiration", "CHF", "malignancy"), "sepsis": ("pneumonia", "UTI", "intra-abdominal infection", "drug reaction"),
    "nstemi": ("demand ischemia", "pericarditis", "PE", "aortic dissection"), "stroke": ("TIA", "hypoglycemia", "seizure with Todd paralysis", "mass"),
    "gibleed": ("PUD", "varices", "gastritis", "malignancy"), "aki": ("prerenal", "ATN", "obstruction", "medication effect"),
    "syncope": ("vasovagal", "orthostasis", "arrhythmia", "seizure"), "chestpain": ("ACS", "GERD", "musculoskeletal", "anxiety"),
    "fall": ("mechanical fall", "syncope", "infection", "medication effect"), "pancreatitis": ("cholecystitis", "PUD", "bowel obstruction"),
}
IMMUNIZATIONS = ("influenza vaccine this season", "COVID-19 vaccine series completed", "pneumococcal vaccine up to date",
                 "Tdap within 10 years", "declines influenza vaccine", "immunization history unknown")
FOLLOW_UP_ISSUES = (
    "Repeat BMP within 1 week of discharge to monitor potassium and creatinine.",
    "Titrate medications as tolerated at follow-up.",
    "Outpatient colonoscopy recommended within 3 months.",
    "Consider referral to outpatient physical therapy.",
    "Review final culture data and adjust antibiotics if needed.",
    "Age-appropriate cancer screening is due.",
    "Follow up incidental pulmonary nodule with repeat CT in 6-12 months.",
    "Confirm the patient was able to fill new prescriptions.",
)
COURSE_EXTRAS = (
    "PT and OT evaluated the patient and recommended {activity} with outpatient therapy.",
    "Case management assisted with discharge planning and confirmed insurance coverage for new medications.",
    "Medication reconciliation was completed with the patient and pharmacy.",
    "Nutrition was consulted for counseling on a {diet} diet.",
    "Social work met with the patient and family to review resources at home.",
    "Home medications were resumed on hospital day {d}.",
    "Pain was controlled on an oral regimen by the day before discharge.",
    "Teach-back performed with {who} regarding the new medication regimen.",
)
ATTESTATIONS = (
    "I have seen and examined the patient, reviewed the resident's note and agree with the findings and plan as documented, "
    "with the following additions: plan discussed with the patient and family at bedside; all questions answered.",
    "Greater than 50% of the visit was spent in counseling and coordination of care. Total time spent on the date of the "
    "encounter was {mins} minutes, including review of outside records, independent interpretation of imaging and "
    "discussion with consultants.",
    "This patient is critically ill with a high probability of imminent or life-threatening deterioration. I personally "
    "spent {mins} minutes of critical care time, exclusive of procedures.",
    "Medical decision making of high complexity. Plan reviewed with the nursing team and case management.",
)
DISCHARGE_INSTRUCTIONS = (
    "Diet: {diet}. Activity: {activity}. Take all medications as prescribed and bring this list to your follow-up visits.",
    "Wound care: keep the incision clean and dry; you may shower in 48 hours; no baths or swimming until cleared.",
    "Call your doctor or return to the Emergency Department for fever > 38.3C, chest pain, shortness of breath, "
    "worsening swelling, bleeding, confusion, or any other concerning symptoms.",
    "Weigh yourself every morning; call the heart failure clinic for a gain of more than 2 lb in a day or 5 lb in a week.",
    "Do not drive while taking opioid pain medication. Use a stool softener while taking opioids.",
    "Check your blood sugar before meals and at bedtime and keep a log for your primary care visit.",
)
PSH = ("appendectomy", "cholecystectomy", "C-section", "knee arthroscopy", "tonsillectomy", "hernia repair", "hysterectomy", "none")
ALLERGIES = (("NKDA", 0.62), ("penicillin (rash)", 0.14), ("sulfa (hives)", 0.07), ("codeine (nausea)", 0.06),
             ("lisinopril (angioedema)", 0.03), ("iodinated contrast", 0.04), ("shellfish", 0.04))
FAMILY = ("noncontributory", "father with MI at 62", "mother with type 2 diabetes", "mother died of breast cancer",
          "father died of a stroke in his 70s", "sister with lupus", "no family history of early CAD", "unknown, adopted")
FILLER_MEDS = (Drug("acetaminophen", "650 mg q6h prn"), Drug("vitamin D3", "1000 units daily"), Drug("docusate", "100 mg twice daily"),
               Drug("melatonin", "3 mg nightly"), Drug("cetirizine", "10 mg daily"), Drug("multivitamin", "1 tab daily"))


@dataclass(frozen=True)
class Author:
    id: str
    name: str
    credentials: str
    role: str
    abbrev: float  # how often shorthand replaces the long form
    verbosity: float  # 0.6 (terse) .. 1.6 (expansive)
    thoroughness: float  # documentation completeness habit, 0..1
    section_style: int
    ap_style: int  # 0 "# problem", 1 numbered, 2 prose
    lab_style: int  # 0 inline, 1 one per line
    keeps_old_template: bool  # some authors never adopt the new template


@dataclass
class NoteFacts:
    """What the author knows when writing: the state of the patient, not the outcome."""

    age: int
    sex: str  # "female" | "male"
    reason: AdmissionReason
    acuity: float
    mentioned: list[ChronicCondition]  # chronic conditions the author documents
    home_drugs: list[Drug]
    social: float
    frailty: float
    lives: str
    tobacco: str
    etoh: str
    drugs: str
    function: str
    prior_admissions_6mo: int
    days_since_last_discharge: int | None
    code_status: str
    doc_quality: float
    elective: bool
    prior_auth: bool
    unit: str
    post_shift: bool
    admitted: datetime
    labs: dict[str, float] = field(default_factory=dict)
    vitals: dict[str, float] = field(default_factory=dict)
    negated: list[ChronicCondition] = field(default_factory=list)  # pertinent negatives: "no history of CHF"


class Writer:
    """Writes one note in one author's voice; holds the rng so every choice is reproducible."""

    def __init__(self, author: Author, rng: random.Random, new_template: bool, new_vocab_p: float):
        self.a, self.rng, self.new_template, self.new_vocab_p = author, rng, new_template, new_vocab_p
        self.h = NEW_TEMPLATE if new_template else SECTION_STYLES[author.section_style]

    # --- small helpers -------------------------------------------------------------
    def ab(self, long: str, short: str) -> str:
        return short if self.rng.random() < self.a.abbrev else long

    def pick(self, options, k: int | None = None):
        if k is None:
            return self.rng.choice(options)
        return self.rng.sample(list(options), min(k, len(options)))

    def maybe(self, p: float) -> bool:
        return self.rng.random() < p

    def term(self, c: ChronicCondition) -> str:
        if c.new_terms and self.rng.random() < self.new_vocab_p:
            return self.rng.choice(c.new_terms)
        # formal terms first: abbreviation-happy authors pick from the whole list
        terms = c.terms if self.rng.random() < self.a.abbrev else c.terms[: max(1, len(c.terms) // 2)]
        return self.rng.choice(terms)

    def drug(self, d: Drug) -> str:
        if d.new_name and self.rng.random() < self.new_vocab_p:
            return f"{d.new_name} {d.new_dose or d.dose}"
        return f"{d.name} {d.dose}"

    def header(self, key: str) -> str:
        return self.h[key]

    def sex_words(self, f: NoteFacts) -> str:
        if self.a.abbrev > 0.5 and self.maybe(0.7):
            return f"{f.age} yo {'F' if f.sex == 'female' else 'M'}"
        noun = ("woman" if f.sex == "female" else "man") if self.maybe(0.5) else f.sex
        return f"{f.age}-year-old {noun}" if self.maybe(0.6) else f"{f.age} y/o {noun}"

    def fmt_days(self, text: str) -> str:
        r = self.rng
        return text.format(d=r.randint(1, 6), h=r.randint(2, 18), w=r.randint(4, 12), t=f"{r.uniform(38.2, 39.9):.1f}C",
                           n=r.randint(2, 16), g=r.randint(1, 4), p=r.randint(0, 3), u=r.randint(1, 3), v=f"{r.uniform(2, 7):.1f}",
                           ef=r.choice((20, 25, 30, 35, 40, 55, 60)), yr=r.randint(2008, 2018), wt=r.randint(55, 120),
                           nyha=r.choice(("II", "III", "II-III")), a1c=f"{r.uniform(6.1, 11.5):.1f}", cr=f"{r.uniform(1.3, 3.5):.1f}",
                           o2=r.choice((2, 3, 4)), fev=r.randint(25, 70), mo=r.randint(1, 14), meld=r.randint(8, 24),
                           name=r.choice(("Patel", "Cohen", "Nguyen", "Okafor", "Rivera", "Kim")), moca=r.randint(12, 24),
                           who=r.choice(("the patient's daughter", "the patient's husband", "the patient's son", "the group home staff")),
                           clinic=r.choice(("Riverside", "Midtown", "Eastside Family", "Ambulatory Care Center")),
                           mins=r.choice((35, 45, 55, 70)), hr=r.randint(62, 98),
                           spec=r.choice(("cardiologist", "nephrologist", "oncologist", "pulmonologist", "PCP")), diet=r.choice(("regular", "heart healthy, 2 g sodium", "carbohydrate controlled", "soft")),
                           activity=r.choice(("as tolerated", "no heavy lifting > 10 lb for 6 weeks", "walk with assistance")))

    # --- sections --------------------------------------------------------------------
    def hpi(self, f: NoteFacts) -> list[str]:
        r, a = self.rng, self.a
        pmh_bits = [self.term(c) for c in f.mentioned[:4]]
        pmh = ", ".join(pmh_bits) if pmh_bits else ("no significant past medical history" if self.maybe(0.5) else "no known medical problems")
        with_w = self.ab("with a history of", "w/ h/o") if pmh_bits else "with"
        cc = r.choice(f.reason.complaints)
        lead = f"{self.sex_words(f)} {with_w} {pmh} who presents {self.ab('with', 'w/')} {cc}."
        if f.elective:
            lead = f"{self.sex_words(f)} {with_w} {pmh} admitted electively for {cc}."
        sentences = [lead]
        n_frag = max(1, round(len(f.reason.history) * min(1.0, 0.45 * a.verbosity + 0.2)))
        for frag in self.pick(f.reason.history, n_frag):
            frag = self.fmt_days(frag)
            sentences.append(self.rng.choice(("Reports ", "Endorses ", "Notes ", "", "Per family, ")) + frag + ".")
        if f.days_since_last_discharge is not None and f.days_since_last_discharge < 120 and self.maybe(0.8):
            weeks = max(1, f.days_since_last_discharge // 7)
            sentences.append(f"Of note, {self.ab('patient', 'pt')} was recently hospitalized here and discharged ~{weeks} weeks ago.")
        if f.prior_admissions_6mo >= 2 and self.maybe(0.6):
            sentences.append(f"This is {self.ab('the patient', 'pt')}'s {f.prior_admissions_6mo + 1}th hospitalization in the past 6 months.")
        if f.frailty > 0.55 and self.maybe(0.7):
            sentences.append(self.pick(("Ambulates with a walker at baseline.", "Has had two falls in the past year.",
                                        "Requires help with bathing and dressing.", "Family reports progressive decline in function.")))
        if f.social > 0.6 and self.maybe(0.6):
            sentences.append(self.pick(("Reports difficulty affording medications.", "Has missed several outpatient appointments.",
                                        "Currently staying in a shelter.", "Lives alone with limited support.")))
        for ctx in self.pick(HPI_CONTEXT, self.rng.randint(1, 2 + round(2 * a.verbosity))):
            sentences.append(self.fmt_days(ctx))
        said = " ".join(sentences).lower()
        neg = [x for x in self.pick(("chest pain", "fevers", "abdominal pain", "hematochezia", "headache", "dysuria", "leg swelling",
                                     "cough", "palpitations", "nausea", "vomiting", "diarrhea", "rash", "syncope"), 5)
               if x.rstrip("s") not in said][:4]
        sentences.append(f"{self.ab('Denies', 'Denies')} {', '.join(neg)}.")
        if not f.elective and (a.verbosity > 0.9 or self.new_template or self.maybe(0.4)):
            sentences += self.ed_course(f)
        if self.new_template:
            # the ambient tool transcribes the conversation at length
            sentences += self.ambient_conversation(f)
        return sentences

    def ed_course(self, f: NoteFacts) -> list[str]:
        v = f.vitals
        labs = ", ".join(f"{(LABS.get(k) or EXTRA_LABS[k])[0]} {val:.{(LABS.get(k) or EXTRA_LABS[k])[5]}f}"
                         for k, val in self.pick(list(f.labs.items()), 3))
        fill = dict(t=f"{v['t']:.1f}", hr=int(v["hr"]), bp=f"{int(v['sbp'])}/{int(v['dbp'])}", rr=int(v["rr"]), spo2=int(v["spo2"]),
                    labs=labs, img=IMAGING.get(f.reason.key, "CXR without acute process"),
                    ed_tx=f.reason.plan[0].split(",")[0], resp=self.pick(("some", "partial", "good", "minimal")), unit=f.unit)
        n = 2 + round(2 * self.a.verbosity)
        return [x.format(**fill) for x in ED_COURSE[:n]]

    def ambient_conversation(self, f: NoteFacts) -> list[str]:
        pron = "She" if f.sex == "female" else "He"
        lines = [f"{pron} states that the symptoms started {self.rng.randint(1, 7)} days ago and have been getting progressively worse.",
                 f"{pron} describes the discomfort as {self.pick(('constant', 'intermittent', 'worse at night', 'worse with activity'))}.",
                 f"{pron} reports that {self.pick(('her daughter', 'his wife', 'a neighbor', 'his son', 'her partner'))} "
                 "encouraged coming to the hospital today.",
                 f"{pron} says {self.pick(('sleep has been poor', 'appetite has been reduced', 'energy is low', 'mood is okay overall'))} "
                 "and is worried about being away from home.",
                 f"We discussed the reasons for admission and {pron.lower()} agrees with the plan.",
                 f"{pron} asks about {self.pick(('when she can go home', 'whether he can eat', 'the results of the scan', 'medication changes'))}, "
                 "which we reviewed together.",
                 f"{pron} denies any recent travel and reports being up to date with vaccinations."]
        return self.pick(lines, self.rng.randint(4, 7))

    def pmh(self, f: NoteFacts) -> list[str]:
        out = [] if f.mentioned or f.negated else ["None" if self.maybe(0.5) else "Denies chronic medical problems"]
        for c in f.mentioned:
            line = f"- {self.term(c)}"
            if c.key in CONDITION_DETAILS and self.rng.random() < 0.3 + 0.5 * self.a.thoroughness:
                line += f" ({self.fmt_days(self.rng.choice(CONDITION_DETAILS[c.key]))})"
            out.append(line)
        for c in f.negated:
            out.append(f"- {self.pick(('no known history of', 'denies history of', 'no prior diagnosis of', 'negative for'))} {c.terms[0]}")
        if self.maybe(0.5):
            out.append("- " + self.pick(("seasonal allergies", "remote kidney stones", "childhood asthma, resolved", "migraines",
                                         "iron deficiency anemia", "osteoarthritis", "insomnia", "vitamin D deficiency")))
        return out

    def meds(self, f: NoteFacts) -> list[str]:
        if self.a.thoroughness < 0.35 and self.maybe(0.5):
            return ["See medication reconciliation"]
        drugs = f.home_drugs + self.pick(FILLER_MEDS, self.rng.randint(0, 3))
        if not drugs:
            return ["None"]
        return [f"- {self.drug(d)}" for d in drugs]

    def social(self, f: NoteFacts) -> list[str]:
        out = [f"Lives {f.lives}.", f"Tobacco: {f.tobacco}.", f"EtOH: {f.etoh}." if self.a.abbrev > 0.4 else f"Alcohol: {f.etoh}.",
               f"Drugs: {f.drugs}.", f"Function: {f.function}."]
        if self.a.verbosity > 0.9:
            out.append(self.pick(("Retired {job}.", "Works as {job}.", "Previously worked as {job}, now on disability.")).format(
                job=self.pick(("a teacher", "a bus driver", "a nurse", "an accountant", "a construction worker", "a home health aide",
                               "a chef", "an engineer"))))
            out.append(self.pick(("Health care proxy: daughter.", "HCP: spouse.", "No health care proxy designated.", "HCP: son; MOLST not on file.")))
        if f.social > 0.65 and self.maybe(0.5):
            out.append(self.pick(("Food insecurity screen positive.", "Uninsured until recently.", "Limited English proficiency; Spanish interpreter used.",
                                  "No reliable transportation to appointments.")))
        return out

    def exam(self, f: NoteFacts) -> list[str]:
        v = f.vitals
        o2 = "RA" if v["spo2"] >= 93 else f"{self.rng.randint(2, 6)}L NC"
        if self.new_template:
            vit = f"T {v['t']:.1f} | HR {v['hr']:.0f} | BP {v['sbp']:.0f}/{v['dbp']:.0f} | RR {v['rr']:.0f} | SpO2 {v['spo2']:.0f}% {o2}"
        else:
            vit = f"Vitals: T {v['t']:.1f} HR {v['hr']:.0f} BP {v['sbp']:.0f}/{v['dbp']:.0f} RR {v['rr']:.0f} SpO2 {v['spo2']:.0f}% on {o2}"
        general = "ill-appearing, in moderate distress" if f.acuity > 1.0 else self.pick(("NAD", "in no acute distress", "comfortable", "well-appearing"))
        if f.frailty > 0.6 and self.maybe(0.6):
            general = self.pick(("frail, elderly-appearing", "cachectic", "chronically ill-appearing"))
        findings = self.pick(f.reason.findings, self.rng.randint(1, len(f.reason.findings)))
        lines = [vit, f"General: {general}"]
        detail = self.a.verbosity * (0.6 + 0.6 * self.a.thoroughness)
        short = {"HEENT": "MMM, anicteric", "Neck": "supple, no JVD", "CV": "RRR, no m/r/g", "Lungs": "CTAB", "Abd": "soft, NT/ND, +BS",
                 "Ext": "no edema", "Neuro": "A&Ox3, no focal deficits", "Skin": "warm, dry", "Psych": "calm"}
        keep = max(4, round(len(EXAM_DETAIL) * min(1.0, detail * 0.8)))
        for name in list(EXAM_DETAIL)[:keep]:
            lines.append(f"{name}: {short[name] if self.rng.random() < self.a.abbrev * 0.6 else self.rng.choice(EXAM_DETAIL[name])}")
        lines.append("Pertinent: " + "; ".join(findings))
        return lines

    def labs(self, f: NoteFacts) -> list[str]:
        out = []
        if self.a.thoroughness > 0.5 and self.maybe(0.6):
            out.append(self.pick(("UA negative for leukocyte esterase and nitrites", "Mg 2.0, Phos 3.4",
                                  "AST 24, ALT 19, Alk phos 88, Albumin 3.6", "PT 12.1, INR 1.0, PTT 29", "TSH 1.8")))
        for key, value in f.labs.items():
            short, long, _, _, unit, dec = LABS.get(key) or EXTRA_LABS[key]
            name = short if self.a.abbrev > 0.5 else long
            out.append(f"{name} {value:.{dec}f}" + (f" {unit}" if self.a.lab_style == 1 and unit else ""))
        if self.a.lab_style == 1 or self.new_template:
            return [f"- {x}" for x in out]
        return ["; ".join(out), "Labs reviewed and notable as above; trend in AM."]

    def ap(self, f: NoteFacts) -> list[str]:
        r, a = self.rng, self.a
        problem = r.choice(f.reason.problem)
        lines = [f"{self.sex_words(f)} admitted {self.ab('with', 'w/')} {problem}."]
        if f.doc_quality > 0.55:
            if f.acuity > 0.3 and not f.elective:
                lines.append(self.pick((f"Requires inpatient level of care given {self.pick(f.reason.findings)} and need for IV therapy; "
                                        "expected to require hospital care spanning at least two midnights.",
                                        "Inpatient admission is medically necessary given severity of illness and risk of deterioration.")))
            if f.elective and f.prior_auth:
                lines.append("Prior authorization on file for the procedure and inpatient stay.")
        if f.reason.key in DIFFERENTIALS and (a.verbosity > 0.8 or self.maybe(0.5)):
            ddx = self.pick(DIFFERENTIALS[f.reason.key], self.rng.randint(2, 3))
            lines.append(f"{self.ab('Differential diagnosis', 'DDx')} includes {', '.join(ddx)}; "
                         f"{self.pick(('favor', 'most consistent with', 'presentation most likely reflects'))} {problem}.")
        plans = self.pick(f.reason.plan, max(1, round(len(f.reason.plan) * min(1.0, a.verbosity * 0.7))))
        chronic = [c for c in f.mentioned if c.drugs][:4]
        if a.ap_style == 2:
            lines.append("Plan: " + "; ".join(plans) + ".")
            if chronic:
                lines.append("Chronic issues (" + ", ".join(self.term(c) for c in chronic) + ") stable, continue home regimen.")
        else:
            items = [(problem, plans)] + [(self.term(c), [f"continue {self.drug(c.drugs[0])}"] + (
                [self.pick(("monitor closely", "outpatient follow-up", "check AM labs", "hold if hypotensive", "titrate as needed"))]
                if self.a.verbosity > 1.0 else [])) for c in chronic]
            for i, (prob, steps) in enumerate(items, 1):
                head = f"# {upper_first(prob)}" if a.ap_style == 0 else f"{i}. {upper_first(prob)}"
                lines.append(head)
                lines += [f"- {s}" for s in steps]
        lines.append(f"DVT ppx: {self.pick(('heparin SQ', 'enoxaparin', 'SCDs', 'on therapeutic anticoagulation'))}")
        if a.verbosity > 0.9:
            lines.append(f"FEN: {self.pick(('regular diet', 'NPO after midnight', 'cardiac diet', 'diabetic diet', 'clear liquids, advance as tolerated'))}; "
                         f"replete lytes PRN")
            lines.append(f"Access: {self.pick(('PIV x2', 'PIV', 'port', 'right IJ CVC'))}")
        lines.append(f"Code status: {f.code_status}")
        if a.thoroughness > 0.5:
            lines.append(f"Dispo: {self.pick(('pending clinical improvement', 'PT/OT evals, case management following', 'home when medically ready'))}")
        if a.verbosity > 1.1:
            lines.append(self.pick((
                "Plan discussed with the patient, who verbalized understanding and agreement. Family updated by phone.",
                "Patient and family at bedside updated on the plan of care; all questions answered. Will continue to follow closely.",
                "Case discussed with the night float team; anticipatory guidance provided for overnight events.")))
        return lines

    def sign(self) -> list[str]:
        a = self.a
        tail = [f"{a.name}, {a.credentials}", a.role]
        if a.thoroughness > 0.55 and self.maybe(0.7):
            tail.insert(0, self.fmt_days(self.pick(ATTESTATIONS)))
        return tail


def upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


# Templated blocks (EHR "smart phrases") that short notes carry; they keep every note in
# the 300-1,500 word range real H&Ps and discharge summaries fall in.
BOILERPLATE = (
    "Quality checklist: VTE prophylaxis addressed. Foley catheter: none. Central line: none. Restraints: none. "
    "Telemetry indication reviewed. Glycemic control addressed. Pressure injury risk assessed on admission. "
    "Fall risk assessed; fall precautions ordered as indicated. Aspiration precautions reviewed.",
    "Medication reconciliation: the outpatient medication list was reviewed with the patient and the outpatient pharmacy; "
    "discrepancies were resolved and documented in the medication administration record. High-risk medications reviewed.",
    "Patient education: the diagnosis, expected hospital course, tests and treatments were explained in plain language "
    "with teach-back. The patient was given the opportunity to ask questions, and all questions were answered.",
    "Advance care planning: goals of care were discussed with the patient, who wishes to continue current treatment. "
    "Health care proxy information was verified in the chart. The patient will revisit these preferences as needed.",
    "Infection prevention: hand hygiene and standard precautions. Screening for MRSA nares per hospital protocol. "
    "Isolation status reviewed with nursing; no isolation required unless results return positive.",
    "Care coordination: the primary care physician was notified of the admission through the EHR. Case management and "
    "social work were consulted to begin discharge planning early, including home services and transportation needs.",
)


def pad_to(lines: list[str], min_words: int, rng: random.Random) -> None:
    words = sum(len(x.split()) for x in lines)
    for block in rng.sample(BOILERPLATE, len(BOILERPLATE)):
        if words >= min_words:
            return
        lines += [block, ""]
        words += len(block.split())


def _section(lines: list[str], title: str, body: list[str], inline: bool = False) -> None:
    if inline and len(body) == 1:
        lines.append(f"{title} {body[0]}")
    else:
        lines.append(title)
        lines.extend(body)
    lines.append("")


def write_admission_note(f: NoteFacts, author: Author, rng: random.Random, new_template: bool, new_vocab_p: float) -> str:
    w = Writer(author, rng, new_template, new_vocab_p)
    lines: list[str] = []
    if new_template:
        lines += ["Hospital Medicine Admission Note", AMBIENT_DISCLAIMER, ""]
    else:
        lines += [rng.choice(("ADMISSION HISTORY AND PHYSICAL", "H&P", "Admission H&P", "History and Physical")), ""]
    lines.append(f"Date of service: {f.admitted:%m/%d/%Y}")
    lines.append("")
    _section(lines, w.header("cc"), [rng.choice(f.reason.complaints)], inline=True)
    _section(lines, w.header("hpi"), [" ".join(w.hpi(f))])
    _section(lines, w.header("pmh"), w.pmh(f))
    if author.verbosity > 0.8 or rng.random() < 0.5:
        _section(lines, w.header("psh"), [", ".join(w.pick(PSH, rng.randint(1, 2)))], inline=True)
    _section(lines, w.header("meds"), w.meds(f))
    allergy = rng.choices([a for a, _ in ALLERGIES], weights=[p for _, p in ALLERGIES])[0]
    _section(lines, w.header("all"), [allergy], inline=True)
    _section(lines, w.header("sh"), w.social(f))
    if author.thoroughness > 0.5 and rng.random() < 0.6:
        _section(lines, "Immunizations:", ["; ".join(w.pick(IMMUNIZATIONS, 2))], inline=True)
    if author.verbosity > 0.9 or rng.random() < 0.4:
        _section(lines, w.header("fh"), [rng.choice(FAMILY)], inline=True)
    if f.doc_quality > 0.45 and (author.verbosity > 0.8 or rng.random() < 0.5):
        ros = ("12-point ROS negative except as noted in HPI." if rng.random() < 0.35 else ROS_DETAILED.format(
            c=rng.choice(("fatigue", "no fevers or chills", "decreased appetite", "weight loss of 5 lb")),
            cv=rng.choice(("see HPI", "no chest pain or palpitations", "mild leg swelling")),
            r=rng.choice(("see HPI", "no cough", "dyspnea on exertion")),
            gi=rng.choice(("no nausea, vomiting or diarrhea", "see HPI", "constipation"))))
        _section(lines, w.header("ros"), [ros], inline=True)
    _section(lines, w.header("pe"), w.exam(f))
    _section(lines, w.header("labs"), w.labs(f))
    if f.reason.key in IMAGING:
        _section(lines, w.header("img"), [IMAGING[f.reason.key]], inline=True)
    if author.thoroughness > 0.4:
        reviewed = [w.fmt_days(x) for x in w.pick(DATA_REVIEWED, 1 + round(2 * author.verbosity * author.thoroughness))]
        _section(lines, "Data reviewed:", [" ".join(reviewed)])
    _section(lines, w.header("ap"), w.ap(f))
    pad_to(lines, 330, rng)
    lines += w.sign()
    return "\n".join(lines) + "\n"


@dataclass
class DischargeFacts:
    admission: NoteFacts
    discharged: datetime
    disposition: str  # words, e.g. "home with home health services"
    complications: list[str]
    secondary_codes_text: list[str]
    procedures: list[str]
    new_meds: list[str]
    follow_up_scheduled: bool
    against_advice: bool


def write_discharge_summary(d: DischargeFacts, author: Author, rng: random.Random, new_template: bool, new_vocab_p: float) -> str:
    f = d.admission
    w = Writer(author, rng, new_template, new_vocab_p)
    title = "Hospital Course Summary and Discharge Instructions" if new_template else rng.choice(
        ("DISCHARGE SUMMARY", "Discharge Summary", "Hospital Discharge Summary"))
    lines = [title, ""]
    lines.append(f"Admission date: {f.admitted:%m/%d/%Y}    Discharge date: {d.discharged:%m/%d/%Y}")
    lines.append(f"Service: {f.reason.service.capitalize()}    Unit: {f.unit}")
    lines.append(f"Attending: {author.name}, {author.credentials}")
    lines.append("")
    principal = rng.choice(f.reason.problem)
    _section(lines, "Principal diagnosis:", [principal], inline=True)
    secondary = [w.term(c) for c in f.mentioned] + d.secondary_codes_text
    if secondary:
        _section(lines, "Secondary diagnoses:", [f"- {s}" for s in secondary])
    if d.procedures:
        _section(lines, "Procedures:", [f"- {p}" for p in d.procedures])
    consults = {"cardiology": "Cardiology", "neurology": "Neurology", "oncology": "Oncology", "surgery": "General surgery",
                "icu": "Critical care", "orthopedics": "Orthopedics"}.get(f.reason.service)
    extra_consults = w.pick(("Physical therapy", "Occupational therapy", "Nutrition", "Social work", "Case management",
                             "Infectious diseases", "Palliative care"), rng.randint(1, 3))
    _section(lines, "Consults:", [", ".join(([consults] if consults else []) + extra_consults)], inline=True)
    hpi = w.hpi(f)
    _section(lines, "Brief HPI:" if not new_template else "Presentation:", [" ".join(hpi[: 4 + int(author.verbosity * 4)])])
    course = [w.fmt_days(c) for c in w.pick(f.reason.course, len(f.reason.course))]
    course.append(w.pick(("patient improved steadily", "the patient's symptoms gradually resolved", "clinical status improved",
                          "by the day of discharge the patient was at baseline")))
    course_lines = [f"{upper_first(principal)}: " + ". ".join(course) + "."]
    for c in d.complications:
        course_lines.append(f"Course complicated by {c}.")
    for c in [c for c in f.mentioned if c.drugs][: 2 + int(author.verbosity)]:
        course_lines.append(f"{upper_first(w.term(c))}: {w.pick(('stable', 'at baseline', 'home regimen continued', 'medications adjusted'))}.")
    for extra in w.pick(COURSE_EXTRAS, rng.randint(2, 3 + round(2 * author.verbosity))):
        course_lines.append(w.fmt_days(extra))
    _section(lines, "Hospital course:", course_lines)
    if author.verbosity > 0.8:
        v = f.vitals
        _section(lines, "Discharge exam:", [f"T 36.{rng.randint(4, 9)} HR {int(v['hr'] * 0.85)} BP {int(v['sbp'])}/{int(v['dbp'])} "
                                            f"RR {rng.randint(14, 18)} SpO2 {rng.randint(94, 99)}% RA",
                                            w.pick(("Alert, oriented, comfortable.", "NAD, ambulating in hallway.", "Resting comfortably."))])
    if d.against_advice:
        cond = "Patient elected to leave against medical advice after risks, including death, were discussed; capacity intact."
    else:
        cond = w.pick(("stable", "good", "fair", "improved")) + (", " + f.function if f.frailty > 0.5 and rng.random() < 0.6 else "")
    if author.thoroughness > 0.35:
        key = [f"{(LABS.get(k) or EXTRA_LABS[k])[0]} {v:.{(LABS.get(k) or EXTRA_LABS[k])[5]}f}" for k, v in f.labs.items()][:6]
        _section(lines, "Key results:", [f"Admission labs: {', '.join(key)}.", IMAGING.get(f.reason.key, "No imaging of note") + "."])
    _section(lines, "Condition at discharge:", [cond], inline=True)
    _section(lines, "Discharge disposition:", [d.disposition], inline=True)
    if rng.random() < 0.4 + 0.5 * author.thoroughness:
        function = ("ambulating independently" if f.frailty < 0.3 else "ambulating with a cane" if f.frailty < 0.5 else
                    rng.choice(("ambulates short distances with a walker", "requires assistance with transfers and ADLs",
                                "deconditioned, needs 24-hour supervision")))
        _section(lines, "Functional status:", [function], inline=True)
    if rng.random() < 0.3 + 0.5 * author.thoroughness:
        support = (f"lives {f.lives}" + ("; " + rng.choice(("limited social support", "concerns about medication affordability",
                                                               "transportation barriers to follow-up", "food insecurity identified"))
                                         if f.social > 0.5 else "; family involved and supportive" if f.social < 0.3 else ""))
        _section(lines, "Home situation:", [support], inline=True)
    meds = ([f"- {w.drug(x)}" for x in f.home_drugs] + [f"- {w.drug(x)}" for x in w.pick(FILLER_MEDS, rng.randint(1, 3))]
            + [f"- NEW: {m}" for m in d.new_meds])
    _section(lines, "Discharge medications:", meds or ["- none"])
    if d.follow_up_scheduled:
        fu = [f"- PCP in {rng.choice((5, 7, 10, 14))} days (appointment scheduled)"]
        if f.reason.service in ("cardiology", "oncology", "neurology", "surgery", "orthopedics"):
            fu.append(f"- {f.reason.service.capitalize()} clinic in 2-4 weeks")
    else:
        fu = ["- Patient to call PCP to schedule follow-up" if rng.random() < 0.6 else "- Follow-up with PCP"]
    _section(lines, "Follow-up:", fu)
    if author.thoroughness > 0.25:
        _section(lines, "Issues for follow-up:", [f"- {x}" for x in w.pick(FOLLOW_UP_ISSUES, rng.randint(2, 4))])
    if author.verbosity > 0.9:
        _section(lines, "Pending results:", [rng.choice(("none", "final blood culture results", "pathology"))], inline=True)
    instructions = [w.fmt_days(x) for x in w.pick(DISCHARGE_INSTRUCTIONS, rng.randint(2, 4))]
    _section(lines, "Instructions:", instructions)
    if author.thoroughness > 0.5:
        lines += [f"Time spent on discharge planning and coordination: {rng.choice((35, 40, 45, 60))} minutes.", ""]
    _section(lines, "Code status:", [f.code_status], inline=True)
    pad_to(lines, 320, rng)
    lines += w.sign()
    return "\n".join(lines) + "\n"
