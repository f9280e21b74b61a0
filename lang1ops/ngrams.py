"""The note's word 1-2-grams (TF-IDF of the whole note), read by a heads model beside the pooled
state of the frozen base.

Why: heads read a 512-token window of a small model's early layer, mean-pooled, which blurs a
single decisive phrase ("DNR/DNI", "hospice", a drug name) that a bag of words reads directly;
the fast-path table (docs/training.md) measures what each adds. Stored in the artifact as plain
data (the vocabulary in `ngrams.json`, the idf vector in `heads.safetensors`), never a pickle, so
loading an artifact cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

NGRAMS_FILE = "ngrams.json"
SETTINGS = {"ngram_range": (1, 2), "sublinear_tf": True, "lowercase": True}


class NgramFeatures:
    def __init__(self, vectorizer: TfidfVectorizer):
        self.vectorizer = vectorizer

    @classmethod
    def fit(cls, texts: list[str], min_df: int = 3, max_features: int = 50_000) -> NgramFeatures:
        return cls(TfidfVectorizer(min_df=min_df, max_features=max_features, **SETTINGS).fit(texts))

    @property
    def size(self) -> int:
        return len(self.vectorizer.vocabulary_)

    @property
    def idf(self) -> np.ndarray:
        return self.vectorizer.idf_

    def transform(self, texts: list[str]) -> sp.csr_matrix:
        """(n, size) l2-normalised TF-IDF rows of the whole notes (not truncated)."""
        return self.vectorizer.transform(texts).tocsr()

    def save(self, directory: Path) -> None:
        terms = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        (Path(directory) / NGRAMS_FILE).write_text(json.dumps({"terms": terms, **SETTINGS}))

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
        return cls(vectorizer)
