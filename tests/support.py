"""Helpers for tests that need something outside Python (a binary, a wheel's data file).

Outside CI such a test skips with the reason; in CI (the CI environment variable set, as
`.ci/run` does) a missing prerequisite is a failure, so nothing silently skips there.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def api_client(base_dir, root, keys: dict[str, str], *, routers=(), api_settings=None, max_note_tokens: int = 64,
               **auth_options):
    """The service's FastAPI app in process: a zero-shot artifact of the tiny Llama at `base_dir`,
    a SQLite store under `root`, one API key per role name in `keys` (name -> key). Yields a
    TestClient with the store as `.store`. (Imports inside: conftest files load before offline mode.)"""
    from fastapi.testclient import TestClient

    from lang1ops.tasks import DEFAULT_CONTRACT
    from serving.api import create_api
    from serving.auth import ApiKey, Authenticator, AuthSettings, Role, hash_api_key
    from serving.backends import LocalBackend, ResolvedModel
    from serving.store import Store
    from training.artifacts import zero_shot_artifact

    artifact = zero_shot_artifact(base_dir, root / "artifact", DEFAULT_CONTRACT, max_note_tokens=max_note_tokens)
    store = Store(f"sqlite:///{root / 'store.sqlite'}")
    auth = Authenticator(AuthSettings(api_keys=[ApiKey(name=name, key_sha256=hash_api_key(key), roles={Role(name)})
                                                for name, key in keys.items()], **auth_options))
    app = create_api(LocalBackend(ResolvedModel("v0001", artifact), dtype="float32"), store, auth, api_settings,
                     routers=list(routers))
    with TestClient(app, raise_server_exceptions=False) as client:
        client.store = store
        yield client
