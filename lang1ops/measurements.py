"""The note's measured values (vitals, labs, age) as features a linear head can threshold.

Why: a bag of words reads "HR 128" as two unrelated tokens, so it cannot learn that a faster heart
rate means a sicker patient, and neither can a mean-pooled state of a small model's early layer.
The stay's acuity, which drives mortality most after the admission reason, reaches an H&P mostly
as such numbers (docs/training.md, "measurements"). Each number is keyed by the word before it
("hr" for "HR 128", "bp" and "bp/" for "BP 131/74") and by the word after it ("yo" for "73 yo"); a
key seen in enough training notes gets quantile bins fitted on them, and a note's first value per
key sets one bin's column. Dates and times are not values. Stored as plain data (the keys and bin
edges in the artifact's `ngrams.json`), never a pickle.
"""

from __future__ import annotations

import re
from bisect import bisect_right

import numpy as np
import scipy.sparse as sp

# a number (or a "systolic/diastolic" pair) not part of a date, a time, a version or a word like "SpO2"
_NUMBER = re.compile(r"(?<![\w/:.])(\d+(?:\.\d+)?)(?:/(\d+(?:\.\d+)?))?(?![\w/:]|\.\d)")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_CONTEXT = 24  # characters searched on each side for the key word


def measured_values(text: str) -> list[tuple[str, float]]:
    """(key, value) pairs in reading order: "<word" for the word before a number, ">word" after it."""
    out = []
    for match in _NUMBER.finditer(text):
        before = _WORD.findall(text[max(0, match.start() - _CONTEXT):match.start()])
        after = _WORD.match(text[match.end():match.end() + _CONTEXT].lstrip(" %"))
        keys = ([f"<{before[-1].lower()}"] if before else []) + ([f">{after.group(0).lower()}"] if after else [])
        for key in keys:
            out.append((key, float(match.group(1))))
            if match.group(2):
                out.append((key + "/", float(match.group(2))))
    return out


def first_values(text: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for key, value in measured_values(text):
        values.setdefault(key, value)
    return values


class MeasurementBins:
    def __init__(self, edges: dict[str, list[float]]):
        self.edges = edges
        self.offsets: dict[str, int] = {}
        offset = 0
        for key, cuts in edges.items():
            self.offsets[key] = offset
            offset += len(cuts) + 1
        self.size = offset

    @classmethod
    def fit(cls, texts: list[str], min_note_fraction: float = 0.02, bins: int = 8, max_keys: int = 300) -> MeasurementBins:
        """Keys that carry a number in at least `min_note_fraction` of `texts`, each cut at the
        quantiles of its values there (`bins` bins at most; fewer where values repeat)."""
        values: dict[str, list[float]] = {}
        for text in texts:
            for key, value in first_values(text).items():
                values.setdefault(key, []).append(value)
        common = sorted((k for k, v in values.items() if len(v) >= max(2, min_note_fraction * len(texts))),
                        key=lambda k: (-len(values[k]), k))[:max_keys]
        quantiles = np.linspace(0, 1, bins + 1)[1:-1]
        return cls({k: [float(c) for c in np.unique(np.quantile(values[k], quantiles))] for k in sorted(common)})

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        """(n, size) one-hot rows: per key the bin of the note's first value; a key not in the note is all zero."""
        rows, cols = [], []
        for i, text in enumerate(texts):
            for key, value in first_values(text).items():
                if key in self.offsets:
                    rows.append(i)
                    cols.append(self.offsets[key] + bisect_right(self.edges[key], value))
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), self.size))

    def to_json(self) -> dict:
        return {"edges": self.edges}

    @classmethod
    def from_json(cls, stored: dict) -> MeasurementBins:
        edges = stored["edges"]
        if not all(isinstance(v, list) and v == sorted(v) for v in edges.values()):
            raise ValueError("measurement bin edges must be ascending lists")
        return cls({str(k): [float(c) for c in v] for k, v in edges.items()})
