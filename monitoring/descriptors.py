"""Numbers that describe a note, computed from its text and kept without the text.

A drift check compares these between the reference window (the champion's training notes)
and the current window: note length in tokens and truncation (also recorded by the service
for every scored note), the note type, which standard sections are present, how many
section-like headers there are, the out-of-vocabulary rate and the number of new terms.

The reference vocabulary is a set of 64-bit hashes of lowercase words that occur in at least
`min_notes` reference notes (rare words such as names never enter it); word text is only held
in memory while a batch of notes is described.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

# Standard sections by their usual headers (H&P and discharge summary). A template that
# renames them ("Reason for Admission", "Objective") shows up as sections going missing.
SECTIONS: dict[str, re.Pattern] = {name: re.compile(pattern, re.IGNORECASE | re.MULTILINE) for name, pattern in {
    "chief_complaint": r"^\s*(CC|chief complaint)\b",
    "hpi": r"^\s*(HPI|history of present illness)\b",
    "past_history": r"^\s*(PMH|past medical history)\b",
    "medications": r"^\s*(meds|home medications|outpatient medications|medications)\b",
    "social_history": r"^\s*(SH|social history)\b",
    "physical_exam": r"^\s*(PE|physical exam|physical examination)\b",
    "labs": r"^\s*(labs|laboratory data)\b",
    "assessment_plan": r"^\s*(A/P|assessment and plan|assessment & plan)\b",
    "hospital_course": r"^\s*(hospital course|brief hospital course)\b",
}.items()}
HEADER = re.compile(r"^\s*[A-Za-z][A-Za-z /&()\-]{1,48}:", re.MULTILINE)
WORD = re.compile(r"[a-z][a-z\-]{2,}")

NUMERIC = ["note_tokens", "truncated", "n_headers", "oov_rate", "new_terms"] + [f"section_{s}" for s in SECTIONS]
CATEGORICAL = ["note_type"]


def word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little", signed=True)


class Vocabulary:
    """Hashed words of a reference corpus (see the module docstring)."""

    def __init__(self, hashes: Iterable[int]):
        self.hashes = frozenset(int(h) for h in hashes)

    @classmethod
    def build(cls, texts: Iterable[str], min_notes: int = 5) -> Vocabulary:
        document_frequency: Counter = Counter()
        for text in texts:
            document_frequency.update(set(WORD.findall(text.lower())))
        return cls(word_hash(w) for w, n in document_frequency.items() if n >= min_notes)

    def save(self, path: Path) -> None:
        np.save(path, np.array(sorted(self.hashes), dtype=np.int64))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        return cls(np.load(path).tolist())

    def __len__(self) -> int:
        return len(self.hashes)


def describe_texts(texts: Iterable[str], vocabulary: Vocabulary) -> pd.DataFrame:
    """Text descriptors, one row per note: section_* (0/1), n_headers, oov_rate (share of words
    not in the reference vocabulary), new_terms (distinct such words)."""
    known: dict[str, bool] = {}  # word -> in vocabulary, memoised across notes (memory only)
    rows = []
    for text in texts:
        words = Counter(WORD.findall(text.lower()))
        total = sum(words.values())
        unseen = 0
        new_terms = 0
        for word, count in words.items():
            hit = known.get(word)
            if hit is None:
                hit = known[word] = word_hash(word) in vocabulary.hashes
            if not hit:
                unseen += count
                new_terms += 1
        row = {f"section_{name}": int(bool(pattern.search(text))) for name, pattern in SECTIONS.items()}
        row.update(n_headers=len(HEADER.findall(text)), oov_rate=unseen / total if total else 0.0, new_terms=new_terms)
        rows.append(row)
    return pd.DataFrame(rows, columns=[c for c in NUMERIC if c.startswith("section_")] + ["n_headers", "oov_rate", "new_terms"])


def token_descriptors(texts: list[str], prompt_encoder) -> pd.DataFrame:
    """note_tokens (kept after truncation) and truncated, exactly as the service records them."""
    encodings = [prompt_encoder.note_encoding(t) for t in texts]
    return pd.DataFrame({"note_tokens": [e.kept_tokens for e in encodings],
                         "truncated": [int(e.truncated) for e in encodings]})


# --------------------------------------------------------------------------- note texts at check time

def texts_by_sha(source: Path, wanted: set[str] | None = None) -> dict[str, str]:
    """sha256 -> note text from a dataset directory (notes.parquet) or a FHIR Bulk export.

    The store keeps hashes, not text: a drift check that wants text descriptors for the
    scored notes reads the hospital's export (or the dataset built from it) and matches notes
    by the hash of their text. Only `wanted` hashes are kept when given.
    """
    source = Path(source)
    out: dict[str, str] = {}
    if (source / "notes.parquet").exists():
        notes = pd.read_parquet(source / "notes.parquet", columns=["text_sha256", "text"])
        for sha, text in zip(notes["text_sha256"], notes["text"], strict=True):
            if wanted is None or sha in wanted:
                out[sha] = text
        return out
    from lang1ops.fhir_source import ProblemLog, iter_resources
    from lang1ops.notes import NoteError, note_from_resource

    for resource, _ in iter_resources(source, ProblemLog()):
        if resource.get("resourceType") not in ("DocumentReference", "DiagnosticReport", "Composition"):
            continue
        try:
            note = note_from_resource(resource)
        except NoteError:
            continue
        if wanted is None or note.text_sha256 in wanted:
            out[note.text_sha256] = note.text
    return out
