"""The attack suite's service: the real FastAPI app around a tiny random Llama, in process.
(Project modules are imported inside fixtures: this file loads before offline mode is set.)"""

from __future__ import annotations

import pytest

from tests.security.helpers import ALERTMANAGER_TOKEN, KEYS
from tests.support import api_client


@pytest.fixture(scope="module")
def api(tiny_llama_dir, tmp_path_factory):
    from lang1ops.settings.serving import ApiSettings

    with api_client(tiny_llama_dir, tmp_path_factory.mktemp("security-api"), KEYS,
                    api_settings=ApiSettings(max_body_bytes=200_000, max_note_bytes=50_000)) as client:
        yield client


@pytest.fixture(scope="module")
def full_api(tiny_llama_dir, tmp_path_factory):
    """Every router the service mounts (extension_routers), as production configures them,
    plus a JWT-less CDS sandbox mount under /sandbox so fuzzed bodies reach the CDS parsers."""
    from integration.cds_hooks import cds_hooks_router
    from integration.subscriptions import subscription_router
    from lang1ops.settings.cds_hooks import CdsHooksSettings
    from lang1ops.settings.fhir_client import SubscriptionSettings
    from lang1ops.settings.monitoring import AlertWebhookSettings
    from lang1ops.settings.serving import ApiSettings
    from lang1ops.settings.views import ViewsSettings
    from monitoring.alerts import alertmanager_router
    from monitoring.history import MonitoringHistory
    from monitoring.performance import monthly_auroc
    from serving.auth import hash_api_key
    from serving.views.router import views_router

    root = tmp_path_factory.mktemp("security-full-api")
    routers = [alertmanager_router(AlertWebhookSettings(bearer_token_sha256=hash_api_key(ALERTMANAGER_TOKEN))),
               cds_hooks_router(CdsHooksSettings(public_base_url="https://lang1.hospital.example")),
               cds_hooks_router(CdsHooksSettings(base_path="/sandbox", require_jwt=False)),
               subscription_router(SubscriptionSettings(enabled=True), run_worker=False),
               views_router(ViewsSettings(), registry_dir=root / "registry", history=MonitoringHistory,
                            performance=monthly_auroc)]
    # the matrix fails authentication on purpose hundreds of times: the per-client limit has its own test
    with api_client(tiny_llama_dir, root, KEYS, routers=routers, max_note_tokens=32, failed_auth_limit=1_000_000,
                    api_settings=ApiSettings(max_body_bytes=200_000, max_note_bytes=50_000)) as client:
        yield client
