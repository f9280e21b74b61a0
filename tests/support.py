"""Helpers for tests that need something outside Python (a binary, a wheel's data file).

Outside CI such a test skips with the reason; in CI (the CI environment variable set, as
`.ci/run` does) a missing prerequisite is a failure, so nothing silently skips there.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(reason: str) -> None:
    """Skip outside CI, fail in CI."""
    if in_ci():
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def require_binary(name: str, hint: str = "") -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"system binary {name!r} not found{': ' + hint if hint else ''}")
    return path  # type: ignore[return-value]


def stored_score_of(store, reference: str, shadow: bool = False):
    """The newest stored score of a note reference ("DocumentReference/<id>/_history/<v>"):
    replay keys also carry the patient, encounter, text and tasks, so tests find them by prefix."""
    from datetime import UTC, datetime

    rows = store.scores_between(datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC), include_shadow=True)
    keys = rows[rows["idempotency_key"].str.startswith(reference + "#") & (rows["shadow"] == shadow)]["idempotency_key"]
    return store.find_score(keys.iloc[-1], shadow) if len(keys) else None
