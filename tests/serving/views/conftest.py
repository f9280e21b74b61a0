"""A views-enabled service over demo data: tiny model (LocalBackend), SQLite store, a registry."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

# Heavy imports (transformers via the backend) happen inside the functions: this conftest loads
# before tests/conftest.py's pytest_configure has set HF offline mode.

KEYS = {"scorer": "k-scorer-123", "reader": "k-reader-456", "admin": "k-admin-789", "care-manager": "k-cm-246"}
# a care manager reads the worklist and sets outreach: reader + the write role
ROLES = {"scorer": {"scorer"}, "reader": {"reader"}, "admin": {"admin"}, "care-manager": {"reader", "care_manager"}}


@pytest.fixture(scope="session")
def views_world(tiny_llama_dir, tmp_path_factory) -> dict:
    """Paths and the 'now' of one demo hospital: store with census, scores, outcomes; a registry."""
    from lang1ops.tasks import DEFAULT_CONTRACT
    from serving.store import Store
    from tests.serving.views.demo_data import write_demo, write_outcomes, write_registry
    from training.artifacts import zero_shot_artifact

    root = tmp_path_factory.mktemp("views")
    artifact = zero_shot_artifact(tiny_llama_dir, root / "artifact", DEFAULT_CONTRACT, max_note_tokens=64, name="lang1-ops")
    write_registry(root / "registry", artifact)
    now = datetime.now(UTC)
    store_url = f"sqlite:///{root / 'store.sqlite'}"
    store = Store(store_url)
    stays = write_demo(store, now)
    write_outcomes(store, now)
    store.dispose()
    return {"root": root, "artifact": artifact, "registry": root / "registry", "store_url": store_url, "now": now,
            "stays": stays}


def build_app(world: dict, settings=None):
    from lang1ops.settings.views import ViewsSettings
    from monitoring.history import MonitoringHistory
    from monitoring.performance import monthly_auroc
    from serving.api import create_api
    from serving.auth import ApiKey, Authenticator, AuthSettings, Role, hash_api_key
    from serving.backends import LocalBackend, ResolvedModel
    from serving.store import Store
    from serving.views.router import views_router

    store = Store(world["store_url"])
    auth = Authenticator(AuthSettings(api_keys=[ApiKey(name=f"{n}-user", key_sha256=hash_api_key(k), roles={Role(r) for r in ROLES[n]})
                                                for n, k in KEYS.items()]))
    backend = LocalBackend(ResolvedModel("v0001", Path(world["artifact"])), dtype="float32")
    # as the service's assembly (app.service) mounts it: with monitoring's history and performance
    router = views_router(settings or ViewsSettings(), registry_dir=world["registry"], model_name="lang1-ops",
                          history=MonitoringHistory, performance=monthly_auroc)
    return create_api(backend, store, auth, routers=[router]), store


def bearer(role: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[role]}"}
