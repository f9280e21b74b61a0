"""Charlson comorbidity index of one encounter from its ICD-10-CM codes (the CCI label).

Categories and codes: Quan H, Sundararajan V, Halfon P, et al. Coding algorithms for defining
comorbidities in ICD-9-CM and ICD-10 administrative data. Med Care 2005;43(11):1130-9 (Table 1,
ICD-10 column). Weights: the original ones of Charlson ME, Pompei P, Ales KL, MacKenzie CR.
J Chronic Dis 1987;40(5):373-83, without age points, which is how the Lang1 CCI label is defined.

Quan's codes are WHO ICD-10; matching them as prefixes carries them over to ICD-10-CM's longer
codes unchanged (so E11.65, hyperglycaemia, stays under E11.6 "without chronic complication",
as in the paper). Codes only WHO ICD-10 has (e.g. E12, E14, F00, I64) are kept so the table
stays the published one; they never match a CM code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class CharlsonCategory:
    key: str
    display: str
    weight: int
    icd10_prefixes: tuple[str, ...]


def _expand(spec: str) -> tuple[str, ...]:
    """'I21 I60-I69' -> ('I21', 'I60', ..., 'I69'): ranges are written as in Quan's table."""
    out: list[str] = []
    for token in spec.split():
        first, _, last = token.partition("-")
        last = last or first
        width = len(first) - 1
        out += [f"{first[0]}{n:0{width}d}" for n in range(int(first[1:]), int(last[1:]) + 1)]
    return tuple(out)


# (key, display, Charlson 1987 weight, Quan 2005 ICD-10 codes without dots; "A-B" is a range)
# fmt: off
_TABLE = [
    ("ami", "Myocardial infarction", 1, "I21 I22 I252"),
    ("chf", "Congestive heart failure", 1, "I099 I110 I130 I132 I255 I420 I425-I429 I43 I50 P290"),
    ("pvd", "Peripheral vascular disease", 1,
     "I70 I71 I731 I738 I739 I771 I790 I792 K551 K558 K559 Z958 Z959"),
    ("cevd", "Cerebrovascular disease", 1, "G45 G46 H340 I60-I69"),
    ("dementia", "Dementia", 1, "F00-F03 F051 G30 G311"),
    ("copd", "Chronic pulmonary disease", 1, "I278 I279 J40-J47 J60-J67 J684 J701 J703"),
    ("rheumd", "Rheumatic disease", 1, "M05 M06 M315 M32-M34 M351 M353 M360"),
    ("pud", "Peptic ulcer disease", 1, "K25-K28"),
    ("mld", "Mild liver disease", 1,
     "B18 K700-K703 K709 K713-K715 K717 K73 K74 K760 K762-K764 K768 K769 Z944"),
    ("diab", "Diabetes without chronic complication", 1,
     "E100 E101 E106 E108 E109 E110 E111 E116 E118 E119 E120 E121 E126 E128 E129 "
     "E130 E131 E136 E138 E139 E140 E141 E146 E148 E149"),
    ("diabwc", "Diabetes with chronic complication", 2,
     "E102-E105 E107 E112-E115 E117 E122-E125 E127 E132-E135 E137 E142-E145 E147"),
    ("hp", "Hemiplegia or paraplegia", 2, "G041 G114 G801 G802 G81 G82 G830-G834 G839"),
    ("rend", "Renal disease", 2, "I120 I131 N032-N037 N052-N057 N18 N19 N250 Z490-Z492 Z940 Z992"),
    ("canc", "Any malignancy, including lymphoma and leukemia, except malignant neoplasm of skin", 2,
     "C00-C26 C30-C34 C37-C41 C43 C45-C58 C60-C76 C81-C85 C88 C90-C97"),
    ("msld", "Moderate or severe liver disease", 3, "I850 I859 I864 I982 K704 K711 K721 K729 K765-K767"),
    ("metacanc", "Metastatic solid tumor", 6, "C77-C80"),
    ("aids", "AIDS/HIV", 6, "B20-B22 B24"),
]
# fmt: on

CATEGORIES: dict[str, CharlsonCategory] = {
    key: CharlsonCategory(key, display, weight, _expand(codes)) for key, display, weight, codes in _TABLE
}

# The milder category is dropped when its severe form is present, so a condition is counted once
# at its highest weight (Quan 2005 / comorbidipy "assignzero").
_HIERARCHY = {"diabwc": "diab", "msld": "mld", "metacanc": "canc"}

_BY_PREFIX = {p: c.key for c in CATEGORIES.values() for p in c.icd10_prefixes}
_PREFIX_LENGTHS = sorted({len(p) for p in _BY_PREFIX}, reverse=True)


def normalize_icd10(code: str) -> str:
    return "".join(code.split()).replace(".", "").upper()


def category_of(code: str) -> str | None:
    code = normalize_icd10(code)
    for n in _PREFIX_LENGTHS:
        if len(code) >= n and (key := _BY_PREFIX.get(code[:n])) is not None:
            return key
    return None


def charlson_categories(codes: Iterable[str]) -> set[str]:
    found = {key for code in codes if (key := category_of(code)) is not None}
    return found - {mild for severe, mild in _HIERARCHY.items() if severe in found}


def charlson_index(codes: Iterable[str]) -> int:
    return sum(CATEGORIES[key].weight for key in charlson_categories(codes))
