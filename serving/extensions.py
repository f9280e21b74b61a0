"""The other areas' endpoints mounted on the service's FastAPI app.

Each area owns its router (CDS Hooks and Subscriptions in integration/, the Alertmanager
webhook in monitoring/, the operational views in serving/views/); this module only collects
them for `serving.app` so that serving.api stays free of their imports.
"""

from __future__ import annotations

from fastapi import APIRouter

from lang1ops.settings import Settings


def extension_routers(settings: Settings) -> list[APIRouter]:
    routers: list[APIRouter] = []
    if settings.integration.cds_hooks.enabled:
        from integration.cds_hooks import cds_hooks_router

        routers.append(cds_hooks_router(settings.integration.cds_hooks))
    return routers
