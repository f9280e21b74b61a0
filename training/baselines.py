"""The classical baseline: TF-IDF over word n-grams and a logistic regression per task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression


@dataclass
class TfidfBaseline:
    vectorizer: TfidfVectorizer
    classifier: LogisticRegression
    n_classes: int

    @classmethod
    def fit(cls, texts: list[str], labels: np.ndarray, n_classes: int, max_features: int = 50_000, c: float = 1.0,
            seed: int = 0) -> TfidfBaseline:
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=3, max_features=max_features, sublinear_tf=True)
        features = vectorizer.fit_transform(texts)
        classifier = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(features, labels)
        return cls(vectorizer, classifier, n_classes)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """(n, n_classes) probabilities; a class never seen in training gets probability 0."""
        seen = self.classifier.predict_proba(self.vectorizer.transform(texts))
        probs = np.zeros((len(texts), self.n_classes))
        probs[:, self.classifier.classes_] = seen
        return probs
