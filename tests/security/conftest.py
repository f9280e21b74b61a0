"""The attack suite's service: the real FastAPI app around a tiny random Llama, in process.
(Project modules are imported inside fixtures: this file loads before offline mode is set.)"""

from __future__ import annotations

import pytest

from tests.security.helpers import KEYS


@pytest.fixture(scope="module")
def api(tiny_llama_dir, tmp_path_factory):
    from fastapi.testclient import TestClient

    from lang1ops.tasks import DEFAULT_CONTRACT
    from serving.api import create_api
    from serving.auth import ApiKey, Authenticator, AuthSettings, Role, hash_api_key
    from serving.backends import LocalBackend, ResolvedModel
    from serving.config import ApiSettings
    from serving.store import Store
    from training.artifacts import zero_shot_artifact

    root = tmp_path_factory.mktemp("security-api")
    artifact = zero_shot_artifact(tiny_llama_dir, root / "artifact", DEFAULT_CONTRACT, max_note_tokens=64)
    store = Store(f"sqlite:///{root / 'store.sqlite'}")
    auth = Authenticator(AuthSettings(api_keys=[ApiKey(name=name, key_sha256=hash_api_key(key), roles={Role(name)})
                                                for name, key in KEYS.items()]))
    app = create_api(LocalBackend(ResolvedModel("v0001", artifact), dtype="float32"), store, auth,
                     ApiSettings(max_body_bytes=200_000, max_note_bytes=50_000))
    with TestClient(app, raise_server_exceptions=False) as client:
        client.store = store
        yield client
