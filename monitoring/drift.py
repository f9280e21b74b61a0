"""Drift checks: the current window of scored notes against the champion's reference window.

Three checks, each on what the service keeps (never note text):

* descriptors: note length in tokens, truncation, note type, standard sections present,
  section-like headers, out-of-vocabulary rate and new terms (monitoring.descriptors). The
  service records tokens, truncation and type for every note; the text descriptors need the
  text, read at check time from the hospital's export (or dataset) and matched by hash.
* embeddings: the pooled note encodings the service stores. A domain classifier (logistic
  regression on principal components, 5-fold out-of-fold AUROC) tries to tell current from
  reference notes: AUROC 0.5 means it cannot. The first principal components also appear as
  columns of the Evidently report.
* predictions: the model's class probabilities per task.

Column drift comes from Evidently 0.7 (`DataDriftPreset`): Wasserstein (numeric) and
Jensen-Shannon (categorical) distances when both windows hold at least `large_window` notes,
KS and chi-square tests below that (distances are noisy on small samples, p-values shrink to
zero on large ones). A check detects drift when at least `drift_share` of its columns drifted
(Evidently's dataset-drift rule); the embeddings check when the domain classifier's AUROC
reaches its threshold. Each run writes the Evidently HTML and JSON and a summary into its run
directory and a row into the history tables (monitoring.history).

The reference: the champion's own training-window notes, scored by the champion (encodings,
probabilities) and described, saved under `<runs_dir>/references/<model>/<version>/` by
`build_reference` (the retraining loop calls it for each candidate; `reference_for` builds it
on first use from the dataset recorded in the artifact's manifest).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from lang1ops.settings.drift_loop import DriftLoopSettings
from monitoring.descriptors import CATEGORICAL, NUMERIC, Vocabulary, describe_texts, token_descriptors

CHECKS = ("descriptors", "embeddings", "predictions")
EMBEDDING_REPORT_COMPONENTS = 5


# --------------------------------------------------------------------------- scoring texts with a model

@dataclass
class ScoredTexts:
    probabilities: dict[str, np.ndarray]  # task -> (n, k)
    encodings: np.ndarray  # (n, H) pooled, as the service stores them
    note_tokens: np.ndarray  # (n,) kept tokens
    truncated: np.ndarray  # (n,) 0/1


def score_texts(model_dir: Path, texts: list[str], shas: list[str], base_fallback: Path | None = None,
                cache=None, dtype: str = "auto", batch: int = 16) -> ScoredTexts:
    """Score notes with an artifact the way the service does. A heads model reuses the
    encoding cache of training (same base, layer and truncation: the same vectors), so the
    reference and the gate's comparisons cost no new forward passes for notes already seen."""
    from lang1ops.artifact import ModelKind, resolve_base, weights_sha256
    from lang1ops.scorer import MultitaskScorer, NoteEncoder, head_probabilities, load_model
    from training.heads import encode_with_cache, encoder_fingerprint

    loaded = load_model(Path(model_dir), base_fallback, dtype=dtype)
    tokens = token_descriptors(texts, loaded.encoder)
    if loaded.kind == ModelKind.HEADS:
        layer = loaded.pooling.layer
        base_dir = resolve_base(loaded.manifest.base, base_fallback)
        fingerprint = {layer: encoder_fingerprint(weights_sha256(base_dir), layer, loaded.manifest.max_note_tokens,
                                                  loaded.model.dtype)}
        encoder = NoteEncoder(loaded.model, loaded.encoder, [layer], max_batch_notes=8)
        frame = pd.DataFrame({"text": texts, "text_sha256": shas})
        vectors = encode_with_cache(encoder, frame, cache, fingerprint)[layer] if texts else np.zeros((0, 1), np.float32)
        probs = head_probabilities(loaded, vectors, texts, list(loaded.heads))
        return ScoredTexts(probs, vectors.astype(np.float32), tokens["note_tokens"].to_numpy(),
                           tokens["truncated"].to_numpy())
    scorer = MultitaskScorer(loaded)
    probs: dict[str, list] = {t: [] for t in loaded.contract.names}
    pooled = []
    for start in range(0, len(texts), batch):
        p, v = scorer.score(texts[start : start + batch])
        for task in probs:
            probs[task].extend(row[task] for row in p)
        pooled.append(v)
    return ScoredTexts({t: np.array(v) for t, v in probs.items()},
                       np.concatenate(pooled) if pooled else np.zeros((0, scorer.hidden_size), np.float32),
                       tokens["note_tokens"].to_numpy(), tokens["truncated"].to_numpy())


def probability_columns(probs: dict[str, np.ndarray]) -> pd.DataFrame:
    """p_<task>_<k> columns like `Store.scores_between`."""
    return pd.DataFrame({f"p_{task}_{k}": p[:, k] for task, p in probs.items() for k in range(p.shape[1])})


# --------------------------------------------------------------------------- the reference window

@dataclass
class DriftReference:
    path: Path
    info: dict
    descriptors: pd.DataFrame
    predictions: pd.DataFrame
    encodings: np.ndarray
    vocabulary: Vocabulary

    @property
    def version(self) -> str | None:
        return self.info.get("version")

    @classmethod
    def load(cls, path: Path) -> DriftReference:
        path = Path(path)
        return cls(path, json.loads((path / "reference.json").read_text()), pd.read_parquet(path / "descriptors.parquet"),
                   pd.read_parquet(path / "predictions.parquet"), np.load(path / "encodings.npy"),
                   Vocabulary.load(path / "vocabulary.npy"))

    def save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        self.descriptors.to_parquet(tmp / "descriptors.parquet", index=False)
        self.predictions.to_parquet(tmp / "predictions.parquet", index=False)
        np.save(tmp / "encodings.npy", self.encodings)
        self.vocabulary.save(tmp / "vocabulary.npy")
        (tmp / "reference.json").write_text(json.dumps(self.info, indent=2, default=str) + "\n")
        tmp.rename(self.path)  # complete or absent


def build_reference(model_dir: Path, dataset, out_dir: Path, settings: DriftLoopSettings, version: str | None = None,
                    base_fallback: Path | None = None, cache=None) -> DriftReference:
    """Score and describe a sample of the model's training-window notes (see the module docstring)."""
    from lang1ops.artifact import load_artifact_contract

    notes = dataset.notes[dataset.notes["split"].isin(settings.reference_splits)]
    if notes.empty:
        raise ValueError(f"dataset {dataset.path} has no notes in splits {settings.reference_splits}")
    sample = notes if len(notes) <= settings.reference_max_notes else notes.sample(settings.reference_max_notes,
                                                                                   random_state=0)
    # the vocabulary comes from the other notes of the training window: built from the sample
    # itself, the sample's out-of-vocabulary rate would be zero by construction
    window = dataset.notes[dataset.notes["split"].isin(["train", "val", "test"])]
    vocabulary = Vocabulary.build(window.loc[~window["note_id"].isin(sample["note_id"]), "text"],
                                  settings.vocabulary_min_notes)
    texts, shas = sample["text"].tolist(), sample["text_sha256"].tolist()
    scored = score_texts(model_dir, texts, shas, base_fallback, cache)
    # the service answers each task only for its note type (TaskContract.tasks_for): so does the reference
    contract = load_artifact_contract(Path(model_dir))
    note_types = sample["note_type"].astype(str).to_numpy()
    for task, probs in scored.probabilities.items():
        probs[note_types != str(contract.task(task).note_type)] = np.nan
    descriptors = describe_texts(texts, vocabulary)
    descriptors.insert(0, "note_tokens", scored.note_tokens)
    descriptors.insert(1, "truncated", scored.truncated)
    descriptors["note_type"] = sample["note_type"].astype(str).to_numpy()
    info = {"model_dir": str(model_dir), "version": version, "dataset": str(dataset.path),
            "splits": settings.reference_splits, "n": len(sample), "vocabulary_words": len(vocabulary),
            "created": datetime.now(UTC).isoformat(), "windows": dataset.info.get("windows")}
    reference = DriftReference(Path(out_dir), info, descriptors, probability_columns(scored.probabilities),
                               scored.encodings, vocabulary)
    reference.save()
    return reference


def reference_for(settings: DriftLoopSettings, model_name: str, version, base_fallback: Path | None = None,
                  cache=None) -> DriftReference:
    """The saved reference of a registry version (a `lang1ops.registry.ModelVersion`), built on first use."""
    path = Path(settings.runs_dir) / "references" / model_name / version.version
    if (path / "reference.json").exists():
        return DriftReference.load(path)
    from training.dataset import Dataset

    dataset_dir = version.manifest.get("data", {}).get("dataset")
    if not dataset_dir or not Path(dataset_dir, "notes.parquet").exists():
        raise FileNotFoundError(f"{model_name} {version.version}: its training dataset ({dataset_dir}) is not "
                                f"available to build the drift reference")
    return build_reference(version.path, Dataset.load(Path(dataset_dir)), path, settings, version.version,
                           base_fallback, cache)


# --------------------------------------------------------------------------- the check

@dataclass
class CheckResult:
    name: str
    detected: bool
    score: float  # share of drifted columns; domain-classifier AUROC for embeddings
    threshold: float
    drifted: int
    columns: int
    method: str
    features: dict[str, float] = field(default_factory=dict)  # column -> drift score (higher = more drift)


@dataclass
class DriftResult:
    checked_at: datetime
    window_start: datetime
    window_end: datetime
    window_by: str
    model_version: str | None
    n_current: int
    n_reference: int
    checks: dict[str, CheckResult]
    report_dir: Path | None
    duration_s: float
    run_id: int | None = None

    @property
    def detected(self) -> bool:
        return any(c.detected for c in self.checks.values())

    def summary(self) -> dict:
        return {"checked_at": self.checked_at.isoformat(), "window": [self.window_start.isoformat(),
                self.window_end.isoformat()], "window_by": self.window_by, "model_version": self.model_version,
                "n_current": self.n_current, "n_reference": self.n_reference, "detected": self.detected,
                "duration_s": round(self.duration_s, 2), "checks": {k: asdict(v) for k, v in self.checks.items()}}


def domain_classifier_auroc(reference: np.ndarray, current: np.ndarray, components: int, max_notes: int,
                            seed: int = 0) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(out-of-fold AUROC of telling current from reference, 3 null SDs above 0.5, reference
    and current projected on the first principal components)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    ref = reference[rng.permutation(len(reference))[:max_notes]]
    cur = current[rng.permutation(len(current))[:max_notes]]
    k = max(1, min(components, ref.shape[1], len(ref) - 1))
    pca = PCA(n_components=k, random_state=seed).fit(ref)
    x = np.vstack([pca.transform(ref), pca.transform(cur)])
    y = np.r_[np.zeros(len(ref)), np.ones(len(cur))]
    folds = min(5, len(ref), len(cur))
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    p = cross_val_predict(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                          method="predict_proba")[:, 1]
    n1, n2 = len(ref), len(cur)
    null_sd = math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))  # SD of the Mann-Whitney AUROC when nothing differs
    return float(roc_auc_score(y, p)), 0.5 + 3 * null_sd, pca.transform(reference), pca.transform(current)


def _drop_constant(ref: pd.DataFrame, cur: pd.DataFrame, columns: list[str]) -> list[str]:
    keep = []
    for c in columns:
        values = pd.concat([ref[c], cur[c]]).dropna()
        if values.nunique() > 1:
            keep.append(c)
    return keep


def _evidently_scores(ref: pd.DataFrame, cur: pd.DataFrame, numeric: list[str], categorical: list[str], large: bool,
                      settings: DriftLoopSettings, report_dir: Path | None) -> tuple[dict[str, float], str]:
    """column -> Evidently drift score, and the method; writes report.html/json into report_dir."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    num_method, cat_method = ("wasserstein", "jensenshannon") if large else ("ks", "chisquare")
    threshold = settings.distance_threshold if large else settings.p_value_threshold
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    report = Report([DataDriftPreset(columns=numeric + categorical, num_method=num_method, cat_method=cat_method,
                                     threshold=threshold)])
    snapshot = report.run(Dataset.from_pandas(cur[numeric + categorical], data_definition=definition),
                          Dataset.from_pandas(ref[numeric + categorical], data_definition=definition))
    if report_dir is not None:
        snapshot.save_html(str(report_dir / "report.html"))
        (report_dir / "report.json").write_text(snapshot.json())
    scores = {}
    for metric in snapshot.dict()["metrics"]:
        config = metric.get("config", {})
        if config.get("type", "").endswith("ValueDrift"):
            scores[config["column"]] = float(metric["value"])
    return scores, f"{num_method}/{cat_method}"


def _column_drifted(score: float, large: bool, settings: DriftLoopSettings) -> bool:
    return score >= settings.distance_threshold if large else score < settings.p_value_threshold


def run_drift_check(store, reference: DriftReference, start: datetime, end: datetime, settings: DriftLoopSettings,
                    by: str | None = None, texts: dict[str, str] | None = None, out_dir: Path | None = None,
                    history=None, same_version: bool = True) -> DriftResult:
    """Compare the notes scored in [start, end) (by `by`: scored_at or note_date) with `reference`.

    `texts` (sha256 -> text, e.g. `descriptors.texts_by_sha(export)`) adds the text descriptors;
    without it only what the store keeps (tokens, truncation, type) is compared. With
    `same_version`, only notes scored by the reference's model version count (prediction and
    encoding drift are about one model). Writes the Evidently report under `out_dir` and, with
    `history`, a drift run row.
    """
    started = time.perf_counter()
    by = by or settings.drift_window_by
    frame = store.scores_between(start, end, by=by)
    if same_version and reference.version and not frame.empty:
        frame = frame[frame["model_version"] == reference.version]
    if frame.empty:
        raise ValueError(f"no scored notes{' of ' + reference.version if same_version and reference.version else ''} "
                         f"with {by} in [{start.isoformat()}, {end.isoformat()})")
    frame = frame.reset_index(drop=True)

    # descriptors
    current = pd.DataFrame({"note_tokens": frame["note_tokens"].to_numpy(), "truncated": frame["truncated"].astype(int).to_numpy(),
                            "note_type": frame["note_type"].fillna("").astype(str).to_numpy()})
    if texts:
        have = frame["text_sha256"].isin(texts.keys()).to_numpy()
        described = describe_texts([texts[s] for s in frame.loc[have, "text_sha256"]], reference.vocabulary)
        for column in described.columns:
            current[column] = np.nan
            current.loc[have, column] = described[column].to_numpy()
    ref = reference.descriptors
    descriptor_columns = [c for c in NUMERIC if c in current.columns and c in ref.columns and current[c].notna().any()]
    descriptor_columns = _drop_constant(ref, current, descriptor_columns)
    categorical = [c for c in CATEGORICAL if c in current.columns and c in ref.columns]
    categorical = _drop_constant(ref, current, categorical)

    # predictions: binary tasks by P(class 1) only (the other column is its complement)
    prediction_columns = [c for c in reference.predictions.columns if c in frame.columns and frame[c].notna().any()]
    by_task: dict[str, list[str]] = {}
    for c in prediction_columns:
        by_task.setdefault(c.rsplit("_", 1)[0], []).append(c)
    prediction_columns = [c for cols in by_task.values() for c in (cols[1:] if len(cols) == 2 else cols)]
    prediction_columns = _drop_constant(reference.predictions, frame, prediction_columns)

    # embeddings
    ids, vectors = _encodings_of(store, frame, reference.version if same_version else None)
    embedding = None
    if len(ids) >= 10 and len(reference.encodings) >= 10 and vectors.shape[1] == reference.encodings.shape[1]:
        auc, null_bound, ref_pcs, cur_pcs = domain_classifier_auroc(
            reference.encodings, vectors, settings.embedding_components, settings.embedding_max_notes)
        embedding = (auc, max(settings.embedding_auroc_threshold, null_bound), ref_pcs, cur_pcs)

    # one Evidently report over every column
    ref_all = pd.concat([ref[descriptor_columns + categorical].reset_index(drop=True),
                         reference.predictions[prediction_columns].reset_index(drop=True)], axis=1)
    cur_all = pd.concat([current[descriptor_columns + categorical], frame[prediction_columns]], axis=1)
    pc_columns: list[str] = []
    if embedding is not None:
        n_pc = min(EMBEDDING_REPORT_COMPONENTS, embedding[2].shape[1])
        pc_columns = [f"embedding_pc{i + 1}" for i in range(n_pc)]
        ref_pc = pd.DataFrame(embedding[2][:, :n_pc], columns=pc_columns)
        cur_pc = pd.DataFrame(embedding[3][:, :n_pc], columns=pc_columns)
        # the windows differ in length from the encodings' rows: keep them as separate rows
        ref_all = pd.concat([ref_all, ref_pc], axis=1)
        cur_all = pd.concat([cur_all, cur_pc], axis=1)
    n_ref, n_cur = len(ref), len(frame)
    large = min(n_ref, n_cur) >= settings.large_window
    checked_at = datetime.now(UTC)
    report_dir = None
    if out_dir is not None:
        report_dir = Path(out_dir) / f"drift-{checked_at:%Y%m%dT%H%M%S%fZ}"
        report_dir.mkdir(parents=True, exist_ok=True)
    numeric = descriptor_columns + prediction_columns + pc_columns
    scores, method = _evidently_scores(ref_all, cur_all, numeric, categorical, large, settings, report_dir)

    def higher_is_more(column: str) -> float:
        s = scores[column]
        return s if large else 1.0 - s

    checks: dict[str, CheckResult] = {}
    for name, columns in (("descriptors", descriptor_columns + categorical), ("predictions", prediction_columns)):
        drifted = sum(_column_drifted(scores[c], large, settings) for c in columns)
        share = drifted / len(columns) if columns else 0.0
        checks[name] = CheckResult(name, bool(columns) and share >= settings.drift_share, share, settings.drift_share,
                                   drifted, len(columns), method, {c: higher_is_more(c) for c in columns})
    if embedding is not None:
        auc, threshold = embedding[0], embedding[1]
        checks["embeddings"] = CheckResult(
            "embeddings", auc >= threshold, auc, threshold, int(auc >= threshold), 1, "domain-classifier",
            {"domain_classifier_auroc": auc, **{c: higher_is_more(c) for c in pc_columns}})
    result = DriftResult(checked_at, start, end, by, reference.version, n_cur, n_ref, checks, report_dir,
                         time.perf_counter() - started)
    if report_dir is not None:
        (report_dir / "summary.json").write_text(json.dumps(result.summary(), indent=2, default=str) + "\n")
    if history is not None:
        result.run_id = history.record_drift(
            checked_at=checked_at, window_start=start, window_end=end, window_by=by, model_version=reference.version,
            n_current=n_cur, n_reference=n_ref, detected=result.detected,
            checks={k: {"detected": v.detected, "score": v.score, "threshold": v.threshold, "drifted": v.drifted,
                        "columns": v.columns, "method": v.method} for k, v in checks.items()},
            features={k: v.features for k, v in checks.items()},
            report_dir=str(report_dir) if report_dir else None, duration_s=result.duration_s)
    return result


def _encodings_of(store, frame: pd.DataFrame, model_version: str | None) -> tuple[list[int], np.ndarray]:
    """Encodings of the notes in `frame` (any window axis: read by scored_at span, kept by id)."""
    start = frame["scored_at"].min().to_pydatetime()
    end = frame["scored_at"].max().to_pydatetime() + pd.Timedelta(microseconds=1).to_pytimedelta()
    ids, vectors = store.encodings_between(start, end, model_version)
    if not ids:
        return [], np.zeros((0, 0), np.float32)
    wanted = set(frame["id"].astype(int))
    keep = np.array([i in wanted for i in ids])
    return [i for i, k in zip(ids, keep, strict=True) if k], vectors[keep]
