"""The attack suite's service: the real FastAPI app around a tiny random Llama, in process.
(Project modules are imported inside fixtures: this file loads before offline mode is set.)"""

from __future__ import annotations

import pytest

from tests.security.helpers import ALERTMANAGER_TOKEN, KEYS


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


@pytest.fixture(scope="module")
def full_api(tiny_llama_dir, tmp_path_factory):
    """Every router the service mounts (extension_routers), as production configures them,
    plus a JWT-less CDS sandbox mount under /sandbox so fuzzed bodies reach the CDS parsers."""
    from fastapi.testclient import TestClient

    from integration.cds_config import CdsHooksSettings
    from integration.cds_hooks import cds_hooks_router
    from integration.client_config import SubscriptionSettings
    from integration.subscriptions import subscription_router
    from lang1ops.tasks import DEFAULT_CONTRACT
    from monitoring.alerts import alertmanager_router
    from monitoring.config import AlertWebhookSettings
    from serving.api import create_api
    from serving.auth import ApiKey, Authenticator, AuthSettings, Role, hash_api_key
    from serving.backends import LocalBackend, ResolvedModel
    from serving.config import ApiSettings
    from serving.store import Store
    from serving.views.config import ViewsSettings
    from serving.views.router import views_router
    from training.artifacts import zero_shot_artifact

    root = tmp_path_factory.mktemp("security-full-api")
    artifact = zero_shot_artifact(tiny_llama_dir, root / "artifact", DEFAULT_CONTRACT, max_note_tokens=32)
    store = Store(f"sqlite:///{root / 'store.sqlite'}")
    # the matrix fails authentication on purpose hundreds of times: the per-client limit has its own test
    auth = Authenticator(AuthSettings(api_keys=[ApiKey(name=name, key_sha256=hash_api_key(key), roles={Role(name)})
                                                for name, key in KEYS.items()], failed_auth_limit=1_000_000))
    routers = [alertmanager_router(AlertWebhookSettings(bearer_token_sha256=hash_api_key(ALERTMANAGER_TOKEN))),
               cds_hooks_router(CdsHooksSettings(public_base_url="https://lang1.hospital.example")),
               cds_hooks_router(CdsHooksSettings(base_path="/sandbox", require_jwt=False)),
               subscription_router(SubscriptionSettings(enabled=True), run_worker=False),
               views_router(ViewsSettings(), registry_dir=root / "registry")]
    app = create_api(LocalBackend(ResolvedModel("v0001", artifact), dtype="float32"), store, auth,
                     ApiSettings(max_body_bytes=200_000, max_note_bytes=50_000), routers=routers)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.store = store
        yield client
