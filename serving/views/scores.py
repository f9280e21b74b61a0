"""The newest stored score of each task for each encounter (read-only over the store's tables)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lang1ops.store_schema import Prediction, ScoredNote
from serving.store import Store

_CHUNK = 500  # encounter ids per IN (...) query, well under every backend's parameter limit


@dataclass(frozen=True)
class TaskScore:
    probabilities: list[float]  # class probabilities, in the contract's option order
    model_version: str
    scored_at: datetime
    note_type: str | None
    scored_note_id: int


def latest_scores(store: Store, encounter_ids: Iterable[str], as_of: datetime) -> dict[str, dict[str, TaskScore]]:
    """encounter id -> task -> the newest non-shadow score of that task, for notes written at or
    before `as_of` (a later note of the same encounter replaces an older one; a re-scored note,
    e.g. by a new champion, replaces its older score).

    A note counts from its own date, not from when it was scored: live, a note is scored within
    seconds of being signed, and a replay (`views.as_of`, back-testing) scores past notes now."""
    written = func.coalesce(ScoredNote.note_date, ScoredNote.scored_at)
    ids = sorted(set(encounter_ids))
    out: dict[str, dict[str, TaskScore]] = {}
    with Session(store.engine) as session:
        for start in range(0, len(ids), _CHUNK):
            rows = session.execute(
                select(ScoredNote.id, ScoredNote.encounter_id, written, ScoredNote.scored_at, ScoredNote.model_version,
                       ScoredNote.note_type, Prediction.task, Prediction.class_index, Prediction.probability)
                .join(Prediction, Prediction.scored_note_id == ScoredNote.id)
                .where(ScoredNote.encounter_id.in_(ids[start:start + _CHUNK]), ScoredNote.shadow.is_(False),
                       written <= as_of)
                .order_by(ScoredNote.id, Prediction.task, Prediction.class_index)
            ).all()
            by_note: dict[tuple[str, int, str], list] = {}
            for note_id, encounter, note_time, scored_at, version, note_type, task, _, p in rows:
                by_note.setdefault((encounter, note_id, task), [note_time, scored_at, version, note_type, []])[4].append(p)
            newest: dict[tuple[str, str], tuple] = {}
            for (encounter, note_id, task), (note_time, scored_at, version, note_type, probs) in by_note.items():
                rank = (_utc(note_time), _utc(scored_at), note_id)
                if (encounter, task) not in newest or rank >= newest[(encounter, task)]:
                    newest[(encounter, task)] = rank
                    out.setdefault(encounter, {})[task] = TaskScore(probs, version, scored_at, note_type or None, note_id)
    return out


def _utc(value: datetime) -> datetime:
    # coalesce() loses the column type: SQLite hands back a naive UTC datetime (or its text)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
