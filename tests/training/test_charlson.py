from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from tests.support import missing
from training.charlson import (
    CATEGORIES,
    category_of,
    charlson_categories,
    charlson_index,
    normalize_icd10,
)

# Per-category codes where this table knowingly differs from comorbidipy's, each with the reason.
# Empty: comorbidipy 0.5.0's charlson_icd10_quan matches Quan 2005 Table 1 code for code.
KNOWN_DIFFERENCES: dict[str, set[str]] = {}

_PKG = "_comorbidipy_data"


@pytest.fixture(scope="module")
def comorbidipy_tables():
    """comorbidipy's mapping and weights, loaded without running its __init__.

    `import comorbidipy` fails under pandas 2 (its calculator imports a removed pandas name), but
    the two data modules are plain Python. They are loaded under a stand-in package so that
    weights.py's `from .mapping import mapping` resolves to the mapping loaded here.
    """
    spec = importlib.util.find_spec("comorbidipy")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        missing("comorbidipy not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    package = types.ModuleType(_PKG)
    package.__path__ = []  # nothing may be imported from it except what is registered below
    loaded = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, _PKG, package)
        for name in ("mapping", "weights"):
            module_spec = importlib.util.spec_from_file_location(f"{_PKG}.{name}", root / f"{name}.py")
            module = importlib.util.module_from_spec(module_spec)
            mp.setitem(sys.modules, module_spec.name, module)
            module_spec.loader.exec_module(module)
            loaded[name] = getattr(module, name)
    return loaded["mapping"]["charlson_icd10_quan"], loaded["weights"]["charlson_icd10_quan"]["charlson"]


def test_table_matches_comorbidipy(comorbidipy_tables):
    mapping, weights = comorbidipy_tables
    assert list(CATEGORIES) == list(mapping)
    for key, category in CATEGORIES.items():
        ours, theirs = set(category.icd10_prefixes), set(mapping[key])
        assert ours ^ theirs == KNOWN_DIFFERENCES.get(key, set()), key
        assert category.weight == weights[key], key


def test_table_shape():
    assert list(CATEGORIES) == [
        "ami", "chf", "pvd", "cevd", "dementia", "copd", "rheumd", "pud", "mld",
        "diab", "diabwc", "hp", "rend", "canc", "msld", "metacanc", "aids",
    ]  # fmt: skip
    assert {k: c.weight for k, c in CATEGORIES.items() if c.weight != 1} == {
        "diabwc": 2, "hp": 2, "rend": 2, "canc": 2, "msld": 3, "metacanc": 6, "aids": 6,
    }  # fmt: skip
    assert all(c.key == k for k, c in CATEGORIES.items())
    # Spot checks that the ranges expanded as written in Quan's table.
    assert CATEGORIES["cevd"].icd10_prefixes == ("G45", "G46", "H340", *(f"I6{d}" for d in range(10)))
    assert "E1165" not in CATEGORIES["diabwc"].icd10_prefixes
    assert len(CATEGORIES["diab"].icd10_prefixes) == len(CATEGORIES["diabwc"].icd10_prefixes) == 25


def test_prefixes_never_overlap_across_categories():
    # category_of promises a unique category, so no prefix may start another category's prefix.
    owned = [(p, c.key) for c in CATEGORIES.values() for p in c.icd10_prefixes]
    assert len({p for p, _ in owned}) == len(owned)
    clashes = [(p, k, q, j) for p, k in owned for q, j in owned if k != j and q.startswith(p)]
    assert clashes == []


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([], 0),
        (["I21.4"], 1),
        (["E11.9", "E11.65"], 1),  # E11.6x is "without chronic complication" in Quan 2005
        (["E11.9", "E11.22"], 2),  # diabwc only
        (["C34.90", "C78.00"], 6),  # metastatic replaces any malignancy
        (["K70.30", "K72.10"], 3),  # severe replaces mild liver disease
        (["I50.9", "J44.9", "N18.4", "C78.00"], 1 + 1 + 2 + 6),
        (["I50.9", "I50.9", "I11.0", "I50.22"], 1),  # a category counts once
        (["S72.001A", "Z00.00", "R51.9"], 0),
        (["B20"], 6),
    ],
)
def test_charlson_index(codes, expected):
    assert charlson_index(codes) == expected


def test_hierarchy_keeps_only_the_severe_form():
    assert charlson_categories(["E11.9", "E11.22"]) == {"diabwc"}
    assert charlson_categories(["C34.90", "C78.00"]) == {"metacanc"}
    assert charlson_categories(["K70.30", "K72.10"]) == {"msld"}
    assert charlson_categories(["K70.30"]) == {"mld"}
    assert charlson_categories(["I50.9", "J44.9", "N18.4", "C78.00"]) == {"chf", "copd", "rend", "metacanc"}


@pytest.mark.parametrize("code", ["I50.9", "i50.9", " I509 ", "I50.9\t", "i 50.9"])
def test_odd_formatting(code):
    assert normalize_icd10(code) == "I509"
    assert category_of(code) == "chf"
    assert charlson_index([code]) == 1


@pytest.mark.parametrize(
    ("code", "key"),
    [
        ("I25.2", "ami"),
        ("I25.5", "chf"),  # same 3-character block as ami, different category
        ("I25.10", None),
        ("I13.0", "chf"),
        ("I13.10", "rend"),
        ("K70.40", "msld"),
        ("K70.31", "mld"),
        ("E11.65", "diab"),
        ("E11.22", "diabwc"),
        ("C44.91", None),  # non-melanoma skin cancer is excluded
        ("C43.9", "canc"),
        ("Z99.2", "rend"),
        ("G30.9", "dementia"),
        ("S72.001A", None),
        ("", None),
        ("I2", None),  # shorter than any prefix
    ],
)
def test_category_of(code, key):
    assert category_of(code) == key


def test_every_category_is_reachable():
    for key, category in CATEGORIES.items():
        for prefix in category.icd10_prefixes:
            assert category_of(prefix) == key
            assert category_of(prefix + "9X") == key
        assert charlson_categories([category.icd10_prefixes[0]]) == {key}
        assert charlson_index([category.icd10_prefixes[0]]) == category.weight
