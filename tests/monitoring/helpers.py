"""Scored notes written straight into a Store (no model): windows with known distributions."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np

from serving.store import NewScore, Store


def add_scores(store: Store, n: int, day: datetime, rng: np.random.Generator, shift: float = 0.0, dim: int = 16,
               prefix: str = "n", version: str = "v0001", readmission: np.ndarray | None = None) -> list[str]:
    """n scored notes dated `day` (one encounter each); `shift` moves lengths, note types,
    encodings and readmission probabilities."""
    encounters = []
    for i in range(n):
        sha = hashlib.sha256(f"{prefix}{i}".encode()).hexdigest()
        p = float(readmission[i]) if readmission is not None else float(np.clip(rng.beta(2, 5) + shift * 0.3, 0, 1))
        vector = (rng.normal(0, 1, dim) + shift * np.r_[np.ones(4), np.zeros(dim - 4)]).astype(np.float32)
        note_type = "discharge_summary" if rng.random() < 0.5 + 0.3 * shift else "history_and_physical"
        encounter = f"e-{prefix}{i}"
        encounters.append(encounter)
        store.save_score(NewScore(
            idempotency_key=f"sha256:{sha}", request_id=f"r-{prefix}{i}", resource_type="DocumentReference",
            resource_id=f"{prefix}{i}", version_id="1", text_sha256=sha, note_type=note_type, patient_id=f"p-{prefix}{i}",
            encounter_id=encounter, note_date=day + timedelta(minutes=i), model_name="lang1-ops", model_version=version,
            model_kind="heads", shadow=False, source="api", probabilities={"readmission": [1 - p, p]}, response=None,
            note_tokens=int(rng.normal(300 + 120 * shift, 40)), truncated=False, latency_ms=1.0,
            encoding=vector.tobytes(), scored_at=datetime.now(UTC)))
    return encounters


def bulk_scores(store: Store, n: int, day: datetime, rng: np.random.Generator, shift: float = 0.0, dim: int = 64,
                version: str = "v0001") -> None:
    """Like add_scores for tens of thousands of notes: one executemany per table (benchmarks)."""
    from sqlalchemy import insert

    from lang1ops.store_schema import NoteEncoding, Prediction, ScoredNote

    now = datetime.now(UTC)
    notes, predictions, encodings = [], [], []
    for i in range(1, n + 1):
        sha = hashlib.sha256(f"bulk{i}".encode()).hexdigest()
        p = float(np.clip(rng.beta(2, 5) + shift * 0.3, 0, 1))
        notes.append({"id": i, "request_id": f"r{i}", "idempotency_key": f"sha256:{sha}", "resource_type": "DocumentReference",
                      "resource_id": f"b{i}", "version_id": "1", "text_sha256": sha,
                      "note_type": "discharge_summary" if rng.random() < 0.5 + 0.3 * shift else "history_and_physical",
                      "patient_id": f"p{i}", "encounter_id": f"e{i}", "note_date": day + timedelta(seconds=i),
                      "scored_at": now, "model_name": "lang1-ops", "model_version": version, "model_kind": "heads",
                      "shadow": False, "source": "bulk", "note_tokens": int(rng.normal(300 + 120 * shift, 40)),
                      "truncated": False, "latency_ms": 1.0, "response": None})
        predictions += [{"scored_note_id": i, "task": "readmission", "class_index": 0, "probability": 1 - p},
                        {"scored_note_id": i, "task": "readmission", "class_index": 1, "probability": p}]
        vector = (rng.normal(0, 1, dim) + shift * np.r_[np.ones(4), np.zeros(dim - 4)]).astype(np.float32)
        encodings.append({"scored_note_id": i, "model_version": version, "vector": vector.tobytes()})
    with store.engine.begin() as connection:
        connection.execute(insert(ScoredNote), notes)
        connection.execute(insert(Prediction), predictions)
        connection.execute(insert(NoteEncoding), encodings)
