"""The classical baseline: TF-IDF over word n-grams and a logistic regression per task."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from lang1ops.metrics import auroc


@dataclass
class TfidfBaseline:
    vectorizer: TfidfVectorizer
    classifier: LogisticRegression
    n_classes: int

    @classmethod
    def fit(cls, texts: list[str], labels: np.ndarray, n_classes: int, max_features: int = 50_000, c: float = 1.0,
            seed: int = 0, val_texts: list[str] | None = None, val_labels: np.ndarray | None = None,
            c_grid: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)) -> TfidfBaseline:
        """Fitted on `texts`; with validation notes, C is chosen on their AUROC from `c_grid` (the
        baseline at its best, as every model it is compared with chooses its own settings)."""
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=3, max_features=max_features, sublinear_tf=True)
        features = vectorizer.fit_transform(texts)
        if val_texts is None or val_labels is None or len(np.unique(val_labels)) < 2:
            return cls(vectorizer, LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(features, labels), n_classes)
        val_features = vectorizer.transform(val_texts)
        best: tuple[float, TfidfBaseline] | None = None
        for candidate in c_grid:
            model = cls(vectorizer, LogisticRegression(C=candidate, max_iter=3000, random_state=seed).fit(features, labels),
                        n_classes)
            score = auroc(val_labels, model.predict_proba_features(val_features))
            if best is None or score > best[0]:
                best = (score, model)
        return best[1]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """(n, n_classes) probabilities; a class never seen in training gets probability 0."""
        return self.predict_proba_features(self.vectorizer.transform(texts))

    def predict_proba_features(self, features) -> np.ndarray:
        seen = self.classifier.predict_proba(features)
        probs = np.zeros((features.shape[0], self.n_classes))
        probs[:, self.classifier.classes_] = seen
        return probs
