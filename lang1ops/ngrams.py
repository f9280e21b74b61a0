"""The note's word 1-2-grams (TF-IDF of the whole note), read by a heads model beside the pooled
state of the frozen base.

Why: heads read a 512-token window of a small model's early layer, mean-pooled, which blurs a
single decisive phrase ("DNR/DNI", "hospice", a drug name) that a bag of words reads directly;
the fast-path table (docs/training.md) measures what each adds. Stored in the artifact as plain
data (the vocabulary in `ngrams.json`, the idf vector in `heads.safetensors`), never a pickle, so
loading an artifact cannot run code. With `measurements`, the columns after the n-grams are the
note's measured values in bins (lang1ops.measurements), unweighted here: a head's coefficients on
them carry the weight its task chose.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from lang1ops.measurements import MeasurementBins

NGRAMS_FILE = "ngrams.json"
SETTINGS = {"ngram_range": (1, 2), "sublinear_tf": True, "lowercase": True}


class NgramFeatures:
    def __init__(self, vectorizer: TfidfVectorizer, measurements: MeasurementBins | None = None):
        self.vectorizer = vectorizer
        self.measurements = measurements

    @classmethod
    def fit(cls, texts: list[str], min_df: int = 3, max_features: int = 50_000, measurements: bool = False) -> NgramFeatures:
        return cls(TfidfVectorizer(min_df=min_df, max_features=max_features, **SETTINGS).fit(texts),
                   MeasurementBins.fit(texts) if measurements else None)

    @property
    def terms(self) -> int:
        return len(self.vectorizer.vocabulary_)

    @property
    def size(self) -> int:
        """Columns of `transform`: the n-gram terms, then the measurement bins."""
        return self.terms + (self.measurements.size if self.measurements else 0)

    @property
    def idf(self) -> np.ndarray:
        return self.vectorizer.idf_

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        """(n, size) l2-normalised TF-IDF rows of the whole notes (not truncated), then their measurement bins."""
        grams = self.vectorizer.transform(texts).tocsr()
        if self.measurements is None:
            return grams
        return sp.hstack([grams, self.measurements.transform(texts)]).tocsr()

    def save(self, directory: Path) -> None:
        terms = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        stored = {"terms": terms, **SETTINGS}
        if self.measurements is not None:
            stored["measurements"] = self.measurements.to_json()
        (Path(directory) / NGRAMS_FILE).write_text(json.dumps(stored))

    @classmethod
    def load(cls, directory: Path, idf: np.ndarray) -> NgramFeatures:
        stored = json.loads((Path(directory) / NGRAMS_FILE).read_text())
        terms = stored["terms"]
        if len(terms) != len(idf):
            raise ValueError(f"{NGRAMS_FILE} has {len(terms)} terms but the idf vector {len(idf)}")
        vectorizer = TfidfVectorizer(vocabulary={t: i for i, t in enumerate(terms)},
                                     ngram_range=tuple(stored["ngram_range"]), sublinear_tf=stored["sublinear_tf"],
                                     lowercase=stored["lowercase"])
        vectorizer.idf_ = np.asarray(idf, dtype=np.float64)
        measurements = stored.get("measurements")
        return cls(vectorizer, MeasurementBins.from_json(measurements) if measurements is not None else None)
