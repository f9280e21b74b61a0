"""The newest stored score of each task for each encounter (read-only over the store's tables)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from serving.store import Prediction, ScoredNote, Store

_CHUNK = 500  # encounter ids per IN (...) query, well under every backend's parameter limit


@dataclass(frozen=True)
class TaskScore:
    probabilities: list[float]  # class probabilities, in the contract's option order
    model_version: str
    scored_at: datetime
    note_type: str | None
    scored_note_id: int


def latest_scores(store: Store, encounter_ids: Iterable[str], as_of: datetime) -> dict[str, dict[str, TaskScore]]:
    """encounter id -> task -> the newest non-shadow score of that task scored at or before
    `as_of` (a re-scored note or a later note of the same encounter replaces an older one)."""
    ids = sorted(set(encounter_ids))
    out: dict[str, dict[str, TaskScore]] = {}
    with Session(store.engine) as session:
        for start in range(0, len(ids), _CHUNK):
            rows = session.execute(
                select(ScoredNote.id, ScoredNote.encounter_id, ScoredNote.scored_at, ScoredNote.model_version,
                       ScoredNote.note_type, Prediction.task, Prediction.class_index, Prediction.probability)
                .join(Prediction, Prediction.scored_note_id == ScoredNote.id)
                .where(ScoredNote.encounter_id.in_(ids[start:start + _CHUNK]), ScoredNote.shadow.is_(False),
                       ScoredNote.scored_at <= as_of)
                .order_by(ScoredNote.scored_at, ScoredNote.id, Prediction.task, Prediction.class_index)
            ).all()
            by_note: dict[tuple[str, int, str], list] = {}
            for note_id, encounter, scored_at, version, note_type, task, _, p in rows:
                by_note.setdefault((encounter, note_id, task), [scored_at, version, note_type, []])[3].append(p)
            # rows come oldest first, so the last assignment per (encounter, task) is the newest
            for (encounter, note_id, task), (scored_at, version, note_type, probs) in by_note.items():
                current = out.setdefault(encounter, {}).get(task)
                if current is None or (scored_at, note_id) >= (current.scored_at, current.scored_note_id):
                    out[encounter][task] = TaskScore(probs, version, scored_at, note_type or None, note_id)
    return out
