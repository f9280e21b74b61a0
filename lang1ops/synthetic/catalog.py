"""Clinical knowledge the synthetic hospital draws on.

Each chronic condition carries its ICD-10-CM codes (so the Charlson index follows from
Quan's algorithm, as for a real hospital), how authors write it at different levels of
abbreviation, the drugs that betray it, and how it changes after the temporal shift
(new terminology, new drug names). Admission diagnoses carry the case mix and the
outcome tendencies (log-LOS, mortality, readmission and denial offsets) that the
latent patient model combines. Numbers are tuned so that label prevalences land near
the Lang1 paper's appendix B; `docs/data.md` records the measured values.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Drug:
    name: str  # generic name as written pre-shift
    dose: str
    new_name: str | None = None  # what replaces it after the shift (newer agent or brand habit)
    new_dose: str | None = None


@dataclass(frozen=True)
class ChronicCondition:
    key: str
    codes: tuple[str, ...]  # ICD-10-CM, one is chosen per patient
    terms: tuple[str, ...]  # how notes spell it: formal first, then shorthand
    charlson: str | None  # Charlson category (Quan) the codes fall in, None if not a Charlson condition
    base_prevalence: float  # at age 40
    age_slope: float  # log-odds per decade over 40
    drugs: tuple[Drug, ...] = ()
    new_terms: tuple[str, ...] = ()  # terminology that replaces `terms` after the shift
    frailty: float = 0.0  # contribution to frailty
    requires: str | None = None  # only present together with this condition


D = Drug

CHRONIC: tuple[ChronicCondition, ...] = (
    ChronicCondition("htn", ("I10",), ("hypertension", "HTN", "essential hypertension"), None, 0.22, 0.55,
                     (D("lisinopril", "20 mg daily"), D("amlodipine", "5 mg daily"), D("hydrochlorothiazide", "25 mg daily", "chlorthalidone", "12.5 mg daily"))),
    ChronicCondition("hld", ("E78.5",), ("hyperlipidemia", "HLD", "dyslipidemia"), None, 0.18, 0.45,
                     (D("atorvastatin", "40 mg nightly"),)),
    ChronicCondition("obesity", ("E66.9", "E66.01"), ("obesity", "morbid obesity", "BMI > 35"), None, 0.16, 0.0,
                     (), new_terms=("obesity, class 2", "severe obesity")),
    ChronicCondition("afib", ("I48.91", "I48.20"), ("atrial fibrillation", "afib", "AF"), None, 0.01, 0.75,
                     (D("warfarin", "5 mg daily", "apixaban", "5 mg twice daily"), D("metoprolol tartrate", "25 mg twice daily", "metoprolol succinate", "50 mg daily"))),
    ChronicCondition("depression", ("F32.9", "F33.1"), ("depression", "MDD", "major depressive disorder"), None, 0.09, 0.0,
                     (D("sertraline", "50 mg daily"),)),
    ChronicCondition("hypothyroid", ("E03.9",), ("hypothyroidism", "hypothyroid"), None, 0.04, 0.25,
                     (D("levothyroxine", "75 mcg daily"),)),
    ChronicCondition("gerd", ("K21.9",), ("GERD", "gastroesophageal reflux"), None, 0.08, 0.15,
                     (D("omeprazole", "20 mg daily", "pantoprazole", "40 mg daily"),)),
    ChronicCondition("osa", ("G47.33",), ("obstructive sleep apnea", "OSA on CPAP", "OSA"), None, 0.04, 0.2),
    ChronicCondition("tobacco", ("F17.210",), ("tobacco use", "active smoker", "nicotine dependence"), None, 0.13, -0.1,
                     (D("nicotine patch", "21 mg daily"),)),
    ChronicCondition("etoh", ("F10.20",), ("alcohol use disorder", "EtOH abuse", "alcohol dependence"), None, 0.035, 0.0,
                     (D("thiamine", "100 mg daily"), D("folic acid", "1 mg daily")),
                     new_terms=("alcohol use disorder, moderate", "AUD")),
    # Charlson conditions (Quan 2005 ICD-10 codes)
    ChronicCondition("ami", ("I25.2",), ("prior MI", "history of myocardial infarction", "s/p NSTEMI"), "ami", 0.0035, 0.45,
                     (D("aspirin", "81 mg daily"), D("clopidogrel", "75 mg daily", "ticagrelor", "90 mg twice daily"))),
    ChronicCondition("chf", ("I50.22", "I50.32", "I50.42"), ("congestive heart failure", "CHF", "systolic heart failure", "diastolic CHF"),
                     "chf", 0.002, 0.8,
                     (D("furosemide", "40 mg daily"), D("carvedilol", "12.5 mg twice daily"), D("lisinopril", "10 mg daily", "sacubitril-valsartan", "49-51 mg twice daily"),
                      D("spironolactone", "25 mg daily", "empagliflozin", "10 mg daily")),
                     new_terms=("HFrEF", "HFpEF", "HFmrEF", "heart failure with reduced ejection fraction"), frailty=0.15),
    ChronicCondition("pvd", ("I73.9", "I70.213"), ("peripheral vascular disease", "PVD", "PAD with claudication"), "pvd", 0.003, 0.6,
                     (D("cilostazol", "100 mg twice daily"),)),
    ChronicCondition("cevd", ("I69.354", "I69.30", "G45.9"), ("prior stroke", "history of CVA", "h/o TIA"), "cevd", 0.0025, 0.65,
                     (D("clopidogrel", "75 mg daily"),), frailty=0.12),
    ChronicCondition("dementia", ("F03.90", "G30.9"), ("dementia", "Alzheimer's dementia", "cognitive impairment"), "dementia", 0.0003, 1.25,
                     (D("donepezil", "10 mg nightly"),), new_terms=("major neurocognitive disorder",), frailty=0.3),
    ChronicCondition("copd", ("J44.9", "J45.909"), ("COPD", "chronic obstructive pulmonary disease", "emphysema", "asthma"), "copd", 0.012, 0.35,
                     (D("albuterol inhaler", "2 puffs q4h prn"), D("tiotropium", "18 mcg inhaled daily", "fluticasone-umeclidinium-vilanterol", "1 inhalation daily")),
                     frailty=0.08),
    ChronicCondition("rheumd", ("M06.9", "M32.9"), ("rheumatoid arthritis", "RA", "lupus"), "rheumd", 0.006, 0.2,
                     (D("methotrexate", "15 mg weekly", "tofacitinib", "5 mg twice daily"), D("prednisone", "5 mg daily"))),
    ChronicCondition("pud", ("K25.9", "K27.9"), ("peptic ulcer disease", "PUD", "h/o gastric ulcer"), "pud", 0.004, 0.25,
                     (D("pantoprazole", "40 mg daily"),)),
    ChronicCondition("mld", ("K76.0", "B18.2", "K70.30", "K74.60"), ("fatty liver disease", "NAFLD", "chronic hepatitis C", "cirrhosis"), "mld",
                     0.008, 0.2, (D("lactulose", "20 g twice daily"),),
                     new_terms=("MASLD", "metabolic dysfunction-associated steatotic liver disease", "MetALD")),
    ChronicCondition("msld", ("I85.00", "K76.6", "K72.10"), ("decompensated cirrhosis", "portal hypertension", "esophageal varices"), "msld",
                     0.01, 0.2, (D("nadolol", "20 mg daily", "carvedilol", "6.25 mg twice daily"), D("rifaximin", "550 mg twice daily")),
                     frailty=0.2, requires="mld"),
    ChronicCondition("diab", ("E11.9", "E11.65", "E10.9"), ("type 2 diabetes", "DM2", "T2DM", "diabetes mellitus"), "diab", 0.02, 0.4,
                     (D("metformin", "1000 mg twice daily"), D("glipizide", "5 mg daily", "semaglutide", "0.5 mg weekly")),
                     new_terms=("type 2 diabetes on GLP-1 RA", "T2D")),
    ChronicCondition("diabwc", ("E11.22", "E11.40", "E11.319"), ("diabetic nephropathy", "diabetic neuropathy", "diabetic retinopathy"),
                     "diabwc", 0.01, 0.45, (D("insulin glargine", "20 units nightly", "tirzepatide", "5 mg weekly"), D("gabapentin", "300 mg three times daily")),
                     requires="diab"),
    ChronicCondition("hp", ("G81.90", "G82.20"), ("hemiplegia", "paraplegia", "left hemiparesis"), "hp", 0.001, 0.3,
                     (D("baclofen", "10 mg three times daily"),), frailty=0.35),
    ChronicCondition("rend", ("N18.30", "N18.4", "N18.6", "Z99.2"), ("chronic kidney disease", "CKD stage 3", "CKD 4", "ESRD on HD"), "rend",
                     0.007, 0.55, (D("sevelamer", "800 mg three times daily with meals"), D("calcitriol", "0.25 mcg daily")),
                     new_terms=("CKD G3a", "CKD G4", "kidney failure on hemodialysis"), frailty=0.1),
    ChronicCondition("canc", ("C34.90", "C18.9", "C50.919", "C61", "C85.90"), ("lung cancer", "colon cancer", "breast cancer", "prostate cancer", "lymphoma"),
                     "canc", 0.008, 0.45, (D("ondansetron", "8 mg q8h prn"),), frailty=0.1),
    ChronicCondition("metacanc", ("C78.00", "C79.51", "C78.7"), ("metastatic disease", "metastatic cancer to lung", "bone metastases"), "metacanc",
                     0.01, 0.45, (D("oxycodone", "5 mg q6h prn"), D("dexamethasone", "4 mg daily")), frailty=0.25, requires="canc"),
    ChronicCondition("aids", ("B20",), ("HIV/AIDS", "AIDS", "HIV with low CD4"), "aids", 0.0012, -0.2,
                     (D("bictegravir-emtricitabine-tenofovir", "1 tab daily"),), new_terms=("advanced HIV disease",)),
)

CHRONIC_BY_KEY = {c.key: c for c in CHRONIC}


@dataclass(frozen=True)
class AdmissionReason:
    key: str
    codes: tuple[str, ...]  # principal diagnosis, ICD-10-CM
    complaints: tuple[str, ...]  # chief complaint phrasings
    history: tuple[str, ...]  # HPI fragments, {d} = symptom days
    findings: tuple[str, ...]  # exam findings
    labs: dict[str, float]  # lab shifts in SDs per unit acuity (see notes.LABS)
    problem: tuple[str, ...]  # assessment phrasing
    plan: tuple[str, ...]
    course: tuple[str, ...]  # hospital course phrasing for the discharge summary
    service: str  # medicine | cardiology | surgery | orthopedics | neurology | obstetrics | oncology | icu
    weight: float  # share of admissions at baseline
    log_los: float  # mean log(LOS days) before patient effects
    mortality: float  # logit offset
    readmit: float  # logit offset
    denial: float  # logit offset
    acuity: float = 0.0  # mean latent acuity
    elective: bool = False
    min_age: int = 18
    max_age: int = 120
    female_only: bool = False
    favours: tuple[str, ...] = ()  # chronic conditions that make this reason likelier
    new_meds: tuple[str, ...] = ()  # started during the stay (discharge medications)
    charlson_code: bool = False  # the principal code itself is a Charlson condition
    from_year: int | None = None  # only seen from this year on (COVID-19)


AR = AdmissionReason

REASONS: tuple[AdmissionReason, ...] = (
    AR("chf", ("I50.23", "I50.33", "I50.43"), ("shortness of breath", "SOB and leg swelling", "dyspnea on exertion", "weight gain and orthopnea"),
       ("progressive dyspnea over {d} days", "3-pillow orthopnea", "PND", "{w} lb weight gain", "bilateral leg swelling", "ran out of diuretic", "dietary indiscretion"),
       ("JVD to the angle of the jaw", "bibasilar crackles", "2+ pitting edema to the knees", "S3 gallop"),
       {"bnp": 2.5, "cr": 0.6, "na": -0.6, "trop": 0.4}, ("acute on chronic heart failure exacerbation", "decompensated CHF", "volume overload"),
       ("IV furosemide 40 mg twice daily, strict I/Os, daily weights", "2 g Na diet, 1.5 L fluid restriction", "TTE", "continue GDMT as BP allows"),
       ("diuresed with IV furosemide with net negative {v} L", "transitioned to oral diuretic", "GDMT optimized"),
       "medicine", 3.5, 1.40, 0.3, 0.75, -0.2, 0.25, favours=("chf",), new_meds=("furosemide",), charlson_code=True),
    AR("copd", ("J44.1",), ("shortness of breath", "wheezing", "COPD exacerbation", "cough and SOB"),
       ("increased sputum production for {d} days", "worsening wheeze", "using rescue inhaler every 2 hours", "URI symptoms preceding"),
       ("diffuse expiratory wheezes", "prolonged expiratory phase", "accessory muscle use", "diminished breath sounds"),
       {"wbc": 0.5, "co2": 0.8}, ("acute exacerbation of COPD", "COPD exacerbation", "hypoxemic respiratory failure due to AECOPD"),
       ("prednisone 40 mg daily x5 days", "duonebs q4h", "azithromycin", "wean O2 to goal SpO2 88-92%"),
       ("treated with steroids, nebulizers and azithromycin", "weaned to room air", "ambulatory saturation checked prior to discharge"),
       "medicine", 3.0, 1.20, 0.0, 0.6, -0.1, 0.1, favours=("copd", "tobacco"), new_meds=("prednisone",), charlson_code=True),
    AR("pneumonia", ("J18.9", "J15.9"), ("fever and cough", "productive cough", "shortness of breath and fever"),
       ("fevers to {t} at home", "cough productive of yellow sputum for {d} days", "pleuritic chest pain", "chills"),
       ("crackles at the right base", "egophony", "tachypneic", "decreased breath sounds at the left base"),
       {"wbc": 1.5, "lactate": 0.4}, ("community-acquired pneumonia", "CAP", "lobar pneumonia"),
       ("ceftriaxone and azithromycin", "blood and sputum cultures", "incentive spirometry"),
       ("treated with IV antibiotics, transitioned to oral", "cultures without growth", "afebrile > 48 h prior to discharge"),
       "medicine", 8.0, 1.30, 0.5, 0.2, 0.0, 0.35, new_meds=("amoxicillin-clavulanate",)),
    AR("sepsis", ("A41.9", "A41.51"), ("fever and confusion", "hypotension", "weakness and fever", "altered mental status"),
       ("febrile and lethargic for {d} days", "decreased oral intake", "dysuria preceding", "found down at home by family"),
       ("ill-appearing", "tachycardic", "warm extremities", "delayed capillary refill"),
       {"wbc": 2.2, "lactate": 2.0, "cr": 0.9, "plt": -0.6}, ("sepsis", "severe sepsis", "septic shock"),
       ("30 mL/kg IV fluid bolus", "broad-spectrum antibiotics (vancomycin and piperacillin-tazobactam)", "trend lactate", "vasopressors if MAP < 65"),
       ("treated with IV fluids and broad-spectrum antibiotics narrowed to culture data", "required pressors briefly in the ICU", "source control achieved"),
       "icu", 6.0, 1.75, 1.6, 0.45, 0.1, 1.1, new_meds=("cefpodoxime",)),
    AR("nstemi", ("I21.4",), ("chest pain", "chest pressure", "substernal chest pain"),
       ("pressure-like chest pain radiating to the left arm for {h} hours", "diaphoresis", "exertional angina for {d} days"),
       ("regular rate and rhythm", "no murmurs", "diaphoretic"), {"trop": 2.5},
       ("NSTEMI", "non-ST elevation myocardial infarction", "acute coronary syndrome"),
       ("aspirin, heparin drip, high-intensity statin", "cardiology consult for cath", "beta blocker"),
       ("underwent cardiac catheterization with PCI to the LAD", "started on dual antiplatelet therapy", "cardiac rehab referral placed"),
       "cardiology", 2.0, 1.00, 0.4, 0.3, -0.1, 0.3, favours=("ami", "htn", "hld", "diab", "tobacco"), new_meds=("ticagrelor", "atorvastatin 80 mg"), charlson_code=True),
    AR("stroke", ("I63.9", "I63.512"), ("right-sided weakness", "slurred speech", "facial droop", "left-sided numbness"),
       ("acute onset weakness, last known well {h} hours prior", "aphasia noted by spouse", "unable to walk"),
       ("right hemiparesis 3/5", "expressive aphasia", "left facial droop", "NIHSS {n}"),
       {"glu": 0.3}, ("acute ischemic stroke", "CVA", "left MCA territory infarct"),
       ("stroke neurology consult", "MRI brain, CTA head and neck", "permissive hypertension", "PT/OT/SLP evaluation"),
       ("MRI confirmed infarct", "neurologic deficits partially improved", "PT/OT recommended"),
       "neurology", 2.0, 1.55, 1.0, 0.3, 0.0, 0.6, min_age=35, favours=("cevd", "afib", "htn", "diab"), new_meds=("atorvastatin 80 mg",), charlson_code=True),
    AR("gibleed", ("K92.2", "K92.1"), ("black stools", "bloody stools", "vomiting blood", "dizziness and melena"),
       ("melena for {d} days", "lightheaded on standing", "NSAID use for back pain", "coffee-ground emesis"),
       ("pale conjunctivae", "epigastric tenderness", "melena on rectal exam"), {"hgb": -2.2, "bun": 1.5},
       ("upper GI bleed", "acute blood loss anemia", "GI hemorrhage"),
       ("two large-bore IVs, type and cross", "IV pantoprazole 40 mg twice daily", "GI consult for EGD", "transfuse for Hgb < 7"),
       ("underwent EGD with clipping of a bleeding ulcer", "transfused {u} units PRBC", "hemoglobin stable for 24 h"),
       "medicine", 4.0, 1.20, 0.8, 0.35, 0.0, 0.6, favours=("pud", "mld", "msld"), new_meds=("pantoprazole",)),
    AR("aki", ("N17.9",), ("decreased urine output", "weakness", "abnormal labs"),
       ("poor PO intake for {d} days", "recent NSAID use", "diarrhea", "sent in by PCP for elevated creatinine"),
       ("dry mucous membranes", "no edema"), {"cr": 2.5, "k": 1.0, "bun": 1.5},
       ("acute kidney injury", "AKI on CKD", "prerenal azotemia"),
       ("IV fluids", "hold nephrotoxins", "renal ultrasound", "trend BMP"),
       ("creatinine improved with IV fluids", "nephrotoxins held", "renal function near baseline at discharge"),
       "medicine", 4.0, 1.25, 0.5, 0.4, 0.1, 0.3, favours=("rend", "diab", "chf")),
    AR("cellulitis", ("L03.115", "L03.116"), ("leg redness", "leg pain and swelling", "skin infection"),
       ("spreading erythema of the lower leg for {d} days", "fevers", "failed outpatient cephalexin"),
       ("warm, tender erythema to the mid-shin", "no fluctuance", "tinea pedis"), {"wbc": 1.0},
       ("cellulitis", "lower extremity cellulitis", "non-purulent cellulitis"),
       ("IV cefazolin", "elevate the leg", "mark borders"),
       ("erythema receded on IV cefazolin", "transitioned to oral cephalexin"),
       "medicine", 4.0, 1.15, -0.5, 0.0, 0.1, -0.1, favours=("obesity", "diab"), new_meds=("cephalexin",)),
    AR("dka", ("E11.10", "E10.10"), ("nausea and vomiting", "high blood sugar", "abdominal pain"),
       ("polyuria and polydipsia for {d} days", "missed insulin doses", "glucometer reading HIGH"),
       ("Kussmaul respirations", "dry mucous membranes", "fruity breath"), {"glu": 3.0, "co2": -2.5, "k": 0.6},
       ("diabetic ketoacidosis", "DKA", "hyperglycemic crisis"),
       ("insulin drip per DKA protocol", "IV fluids with potassium repletion", "endocrine consult", "diabetes education"),
       ("anion gap closed on insulin drip", "transitioned to basal-bolus insulin", "diabetes education completed"),
       "icu", 2.5, 1.05, 0.2, 0.55, 0.0, 0.4, max_age=70, favours=("diab",), new_meds=("insulin glargine",)),
    AR("syncope", ("R55",), ("passed out", "syncope", "loss of consciousness"),
       ("brief loss of consciousness while standing", "no prodrome", "witnessed by family, no seizure activity"),
       ("orthostatic", "no focal deficits", "regular rhythm"), {}, ("syncope", "syncope and collapse, likely vasovagal"),
       ("telemetry", "orthostatic vitals", "TTE"), ("telemetry without arrhythmia", "orthostatics negative", "echo without structural disease"),
       "medicine", 3.5, 0.40, -0.8, -0.2, 0.9, -0.5),
    AR("chestpain", ("R07.9", "R07.89"), ("chest pain", "atypical chest pain", "left chest discomfort"),
       ("intermittent chest discomfort for {d} days", "not exertional", "reproducible with palpation"),
       ("chest wall tenderness", "regular rate and rhythm"), {}, ("chest pain, ACS ruled out", "atypical chest pain"),
       ("serial troponins", "stress test", "telemetry"), ("troponins negative x2", "stress test without ischemia"),
       "cardiology", 4.0, 0.15, -1.2, -0.3, 1.25, -0.7),
    AR("uti", ("N39.0", "N10"), ("fever and flank pain", "confusion", "burning with urination"),
       ("dysuria and frequency for {d} days", "fevers and rigors", "flank pain"),
       ("CVA tenderness", "suprapubic tenderness"), {"wbc": 1.2, "cr": 0.3}, ("pyelonephritis", "complicated UTI", "acute cystitis with sepsis ruled out"),
       ("ceftriaxone", "urine culture", "IV fluids"), ("treated with ceftriaxone, narrowed per culture", "symptoms resolved"),
       "medicine", 4.5, 1.05, 0.1, 0.25, 0.2, 0.1, new_meds=("ciprofloxacin",)),
    AR("hipfx", ("S72.001A", "S72.141A"), ("fall with hip pain", "unable to bear weight", "mechanical fall"),
       ("mechanical fall at home", "tripped on a rug", "unable to ambulate after the fall", "no head strike"),
       ("shortened and externally rotated left leg", "pain with hip range of motion"), {"hgb": -0.5},
       ("left hip fracture", "intertrochanteric fracture of the femur"),
       ("orthopedics for ORIF", "pain control", "DVT prophylaxis", "PT/OT post-op"),
       ("underwent ORIF without complication", "PT recommended subacute rehab", "pain controlled on oral regimen"),
       "orthopedics", 3.0, 1.55, 0.7, 0.3, 0.1, 0.4, min_age=60, new_meds=("enoxaparin", "oxycodone")),
    AR("tka", ("M17.11", "M17.12"), ("elective knee replacement",), ("end-stage osteoarthritis of the knee", "failed conservative management including injections"),
       ("well-healed incision", "neurovascularly intact"), {}, ("primary osteoarthritis of the knee, s/p total knee arthroplasty",),
       ("post-op pain control", "PT for ambulation", "aspirin for DVT prophylaxis"), ("tolerated TKA well", "cleared by PT"),
       "orthopedics", 4.0, 0.65, -2.5, -0.6, 0.5, -1.2, elective=True, min_age=45, new_meds=("aspirin", "oxycodone")),
    AR("cabg", ("I25.10",), ("elective CABG",), ("multivessel coronary artery disease on cath", "stable angina"),
       ("sternal incision clean", "chest tubes in place"), {"hgb": -0.8}, ("CAD s/p CABG x3",),
       ("post-op CT surgery protocol", "chest tube management", "cardiac rehab"), ("extubated POD0", "chest tubes removed", "atrial fibrillation post-op managed with amiodarone"),
       "surgery", 1.0, 1.90, -0.2, 0.2, 0.4, 0.2, elective=True, min_age=45, favours=("ami", "diab", "hld"), new_meds=("metoprolol", "aspirin")),
    AR("colectomy", ("C18.9", "C18.7"), ("scheduled colectomy",), ("colon mass found on screening colonoscopy", "biopsy-proven adenocarcinoma"),
       ("midline incision clean", "soft abdomen"), {}, ("colon adenocarcinoma s/p colectomy",),
       ("ERAS pathway", "advance diet", "oncology follow-up"), ("tolerated diet by POD3", "return of bowel function"),
       "surgery", 1.5, 1.45, -0.3, 0.1, 0.3, 0.0, elective=True, min_age=40, charlson_code=True),
    AR("sbo", ("K56.609", "K56.52"), ("abdominal pain and vomiting", "abdominal distension", "no bowel movement"),
       ("crampy abdominal pain for {d} days", "bilious emesis", "prior abdominal surgery"),
       ("distended, tympanitic abdomen", "high-pitched bowel sounds"), {"k": -0.5, "bun": 0.5},
       ("small bowel obstruction", "partial SBO"), ("NPO, NG tube to suction", "surgery consult", "serial abdominal exams"),
       ("managed conservatively with NG decompression", "diet advanced"), "surgery", 3.0, 1.35, 0.2, 0.3, 0.1, 0.3),
    AR("appendicitis", ("K35.80",), ("right lower quadrant pain", "abdominal pain"), ("periumbilical pain migrating to the RLQ over {h} hours", "anorexia"),
       ("McBurney point tenderness", "guarding"), {"wbc": 1.4}, ("acute appendicitis",),
       ("laparoscopic appendectomy", "IV antibiotics"), ("underwent laparoscopic appendectomy", "tolerated regular diet"),
       "surgery", 3.0, 0.45, -2.0, -0.5, 0.1, -0.5, max_age=75),
    AR("pancreatitis", ("K85.90", "K85.20"), ("epigastric pain", "abdominal pain radiating to the back"),
       ("severe epigastric pain for {d} days", "nausea and vomiting", "heavy alcohol use", "known gallstones"),
       ("epigastric tenderness", "voluntary guarding"), {"lipase": 3.0, "wbc": 0.8},
       ("acute pancreatitis", "alcohol-induced pancreatitis", "gallstone pancreatitis"),
       ("aggressive IV fluids", "pain control", "advance diet as tolerated", "RUQ ultrasound"), ("pain improved", "tolerated diet"),
       "medicine", 3.0, 1.35, 0.5, 0.45, 0.1, 0.3, favours=("etoh",)),
    AR("hepenceph", ("K76.82", "K72.90"), ("confusion", "altered mental status", "jaundice and confusion"),
       ("increasing confusion for {d} days", "not taking lactulose", "asterixis noted by family"),
       ("asterixis", "jaundice", "ascites", "somnolent but arousable"), {"bili": 2.0, "inr": 1.5, "na": -1.0, "plt": -1.0},
       ("hepatic encephalopathy", "decompensated cirrhosis", "acute on chronic liver failure"),
       ("lactulose titrated to 3 BMs daily", "rifaximin", "diagnostic paracentesis", "hepatology consult"),
       ("mental status improved with lactulose", "paracentesis without SBP"), "medicine", 2.0, 1.55, 1.6, 1.0, 0.1, 0.7,
       favours=("mld", "msld", "etoh"), new_meds=("lactulose", "rifaximin")),
    AR("etohwd", ("F10.239", "F10.230"), ("alcohol withdrawal", "tremors", "hallucinations"),
       ("last drink {h} hours prior", "tremulous and diaphoretic", "prior withdrawal seizures"),
       ("tremulous", "tachycardic", "diaphoretic"), {"mcv": 1.0, "plt": -0.7}, ("alcohol withdrawal", "alcohol withdrawal with delirium"),
       ("CIWA protocol with phenobarbital", "thiamine, folate, multivitamin", "social work and addiction medicine"),
       ("withdrawal managed on protocol", "addiction medicine evaluated"), "medicine", 2.5, 1.10, 0.3, 0.9, 0.2, 0.3,
       max_age=80, favours=("etoh",), new_meds=("naltrexone",)),
    AR("delivery", ("O80", "Z37.0"), ("labor", "contractions", "rupture of membranes"),
       ("G{g}P{p} at 39 weeks in active labor", "spontaneous rupture of membranes", "uncomplicated prenatal course"),
       ("gravid uterus", "cervix 6 cm dilated"), {}, ("intrauterine pregnancy at term, in labor",),
       ("expectant management of labor", "epidural per patient request"), ("uncomplicated spontaneous vaginal delivery", "postpartum course uncomplicated"),
       "obstetrics", 7.0, 0.55, -5.0, -2.2, -0.2, -1.5, min_age=18, max_age=44, female_only=True, new_meds=("ibuprofen",)),
    AR("csection", ("O82", "O34.21"), ("scheduled cesarean", "failure to progress"), ("G{g}P{p} at 39 weeks", "prior cesarean section"),
       ("gravid uterus",), {}, ("term pregnancy, delivered by cesarean section",), ("cesarean section", "post-op care"),
       ("uncomplicated low transverse cesarean section", "tolerating diet, ambulating"), "obstetrics", 3.5, 1.05, -4.5, -1.8, 0.0, -1.2,
       min_age=18, max_age=45, female_only=True, new_meds=("oxycodone",)),
    AR("neutropenic", ("D70.1", "R50.81"), ("fever on chemotherapy", "neutropenic fever"),
       ("fever to {t} {d} days after chemotherapy", "mucositis"), ("port site clean", "mucositis"), {"wbc": -2.5, "plt": -1.2},
       ("febrile neutropenia", "neutropenic fever after chemotherapy"), ("cefepime", "blood cultures", "oncology consult"),
       ("treated with cefepime until count recovery", "cultures negative"), "oncology", 1.5, 1.55, 1.0, 0.8, 0.1, 0.6,
       favours=("canc", "metacanc"), new_meds=("levofloxacin",)),
    AR("hyperk", ("E87.5",), ("abnormal labs", "weakness", "missed dialysis"), ("missed dialysis session", "dietary indiscretion"),
       ("AV fistula with thrill", "trace edema"), {"k": 3.0, "cr": 1.5}, ("hyperkalemia", "hyperkalemia in ESRD"),
       ("calcium gluconate, insulin/dextrose", "urgent hemodialysis"), ("hyperkalemia corrected with dialysis",), "medicine", 1.5, 0.55, 0.2, 0.9, 0.4, 0.2,
       favours=("rend",)),
    AR("pe", ("I26.99",), ("shortness of breath", "pleuritic chest pain"), ("sudden-onset dyspnea", "recent long flight", "unilateral leg swelling"),
       ("tachycardic", "clear lungs"), {"trop": 0.5}, ("acute pulmonary embolism", "PE without right heart strain"),
       ("heparin drip", "LE dopplers", "TTE"), ("transitioned to apixaban",), "medicine", 2.5, 1.10, 0.6, 0.2, 0.1, 0.4, new_meds=("apixaban",)),
    AR("afrvr", ("I48.91",), ("palpitations", "fast heart rate"), ("palpitations for {h} hours", "missed doses of metoprolol"),
       ("irregularly irregular", "tachycardic"), {}, ("atrial fibrillation with RVR",), ("rate control with diltiazem", "anticoagulation"),
       ("rate controlled", "anticoagulation started"), "cardiology", 3.0, 0.75, -0.2, 0.2, 0.5, 0.0, min_age=40, favours=("afib", "htn")),
    AR("fall", ("R29.6", "W19.XXXA"), ("fall", "weakness", "frequent falls"), ("fell at home, found by daughter", "generalized weakness for {d} days", "poor oral intake"),
       ("bruising over the right hip", "deconditioned"), {"na": -0.5}, ("fall with generalized weakness", "deconditioning", "failure to thrive"),
       ("PT/OT", "fall precautions", "case management for disposition"), ("PT recommended SNF", "placement arranged"),
       "medicine", 3.0, 1.45, 0.4, 0.55, 0.6, 0.2, min_age=65),
    AR("covid", ("U07.1",), ("fever and cough", "shortness of breath", "positive COVID test"),
       ("fevers and myalgias for {d} days", "positive home antigen test", "worsening dyspnea"), ("tachypneic", "scattered crackles"),
       {"crp": 2.0, "wbc": -0.3}, ("COVID-19 pneumonia", "acute hypoxemic respiratory failure due to COVID-19"),
       ("dexamethasone 6 mg daily", "remdesivir", "prone positioning as tolerated"), ("treated with dexamethasone and remdesivir", "weaned off oxygen"),
       "medicine", 0.0, 1.60, 1.2, 0.3, 0.2, 0.7, from_year=2020, new_meds=("dexamethasone",)),
)

REASON_BY_KEY = {r.key: r for r in REASONS}

# Services map to units (Encounter.location) for the bed board and worklists.
UNITS: dict[str, tuple[str, ...]] = {
    "medicine": ("5 West Medicine", "6 East Medicine", "7 North Telemetry"),
    "cardiology": ("7 North Telemetry", "CCU"),
    "icu": ("MICU",),
    "surgery": ("8 South Surgery",),
    "orthopedics": ("9 West Orthopedics",),
    "neurology": ("4 North Stroke Unit",),
    "obstetrics": ("Labor and Delivery",),
    "oncology": ("10 East Oncology",),
    "rehabilitation": ("Acute Rehab Unit",),
    "palliative": ("Palliative Care Unit",),
}

PAYERS: dict[str, tuple[str, str]] = {  # key -> (payer name, Coverage.type code in v3-ActCode)
    "medicare": ("Medicare", "SUBSIDIZ"),
    "medicare_advantage": ("Empire Medicare Advantage", "MCPOL"),
    "medicaid": ("NY State Medicaid", "SUBSIDIZ"),
    "commercial": ("Metro Health Plan", "EHCPOL"),
    "commercial_b": ("Atlantic Blue", "EHCPOL"),
}

# X12 claim adjustment reason codes (CARC) a payer gives for a denied inpatient claim.
DENIAL_REASONS: tuple[tuple[str, str], ...] = (
    ("50", "Not deemed a medical necessity by the payer"),
    ("197", "Precertification/authorization absent"),
    ("16", "Claim lacks information needed for adjudication"),
    ("167", "Diagnosis is not covered"),
    ("N/A-level", "Inpatient level of care not supported; observation status applies"),
)

FIRST_NAMES_F = ("Maria", "Linda", "Patricia", "Jennifer", "Aisha", "Mei", "Rosa", "Fatima", "Grace", "Olga", "Esther", "Tanya",
                 "Keisha", "Priya", "Ana", "Helen", "Dorothy", "Yolanda", "Sofia", "Chen")
FIRST_NAMES_M = ("James", "Robert", "Luis", "Mohammed", "Wei", "David", "Andre", "Jose", "Michael", "Samuel", "Ivan", "Raj",
                 "Darnell", "Thomas", "Kwame", "Victor", "Hector", "Paul", "Arthur", "Kenji")
LAST_NAMES = ("Smith", "Garcia", "Johnson", "Nguyen", "Williams", "Rodriguez", "Chen", "Brown", "Patel", "Jones", "Kim",
              "Lopez", "Davis", "Cohen", "Martinez", "Okafor", "Wilson", "Rivera", "Ivanova", "Thompson", "Singh", "Moore")

# OMB race categories (US Core race extension) with a city-like mix.
RACES: tuple[tuple[str, str, float], ...] = (
    ("2106-3", "White", 0.45),
    ("2054-5", "Black or African American", 0.24),
    ("2028-9", "Asian", 0.14),
    ("2131-1", "Other Race", 0.12),
    ("UNK", "Unknown", 0.05),
)
ETHNICITIES: tuple[tuple[str, str, float], ...] = (
    ("2135-2", "Hispanic or Latino", 0.22),
    ("2186-5", "Not Hispanic or Latino", 0.74),
    ("UNK", "Unknown", 0.04),
)


@dataclass
class ShiftEffects:
    """What changes at the shift date: the documentation template, vocabulary, case mix and
    care processes (the last make the old text-outcome relationship stale, as a real program
    change would)."""

    reason_weights: dict[str, float] = field(default_factory=lambda: {
        "sepsis": 1.35, "covid": 1.0, "chf": 1.2, "fall": 1.3, "delivery": 0.85, "tka": 0.8, "syncope": 1.25, "chestpain": 1.3,
    })
    age_shift_years: float = 2.0
    # A transitional-care program for heart-failure and COPD discharges lowers their
    # readmission risk; a hospital-at-home program shortens stays for cellulitis, UTI and
    # pneumonia; a large payer starts denying short stays more often.
    # A community-health-worker program also blunts the effect of social risk on readmission,
    # and a sepsis bundle lowers sepsis and COVID-19 mortality.
    readmit_offsets: dict[str, float] = field(default_factory=lambda: {"chf": -1.0, "copd": -0.9, "hepenceph": 0.5, "fall": 0.6,
                                                                      "pneumonia": 0.4, "uti": 0.4})
    social_readmit_scale: float = 0.25
    mortality_offsets: dict[str, float] = field(default_factory=lambda: {"sepsis": -0.8, "covid": -0.8, "stroke": 0.4})
    mortality_intercept: float = 0.3
    log_los_offsets: dict[str, float] = field(default_factory=lambda: {"cellulitis": -0.5, "uti": -0.45, "pneumonia": -0.35,
                                                                      "copd": -0.3, "chf": -0.2, "fall": 0.35, "hipfx": 0.3})
    readmit_intercept: float = 0.75
    denial_intercept: float = -0.2
    short_stay_denial: float = 0.55
