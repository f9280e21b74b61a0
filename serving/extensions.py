"""The other areas' endpoints mounted on the service's FastAPI app.

Each area owns its router (CDS Hooks and Subscriptions in integration/, the Alertmanager
webhook in monitoring/, the operational views in serving/views/); this module only collects
them for `serving.app` so that serving.api stays free of their imports.
"""

from __future__ import annotations

from fastapi import APIRouter

from lang1ops.settings import Settings


def extension_routers(settings: Settings) -> list[APIRouter]:
    from monitoring.alerts import alertmanager_router
    from monitoring.metrics import register_collector
    from monitoring.status_metrics import MonitoringStatusCollector
    from serving.store import Store

    # drift, label and rolling-AUROC gauges, read from the store at scrape time
    register_collector(MonitoringStatusCollector(Store(settings.serving.store_url)))

    routers: list[APIRouter] = [alertmanager_router(settings.monitoring.alerts)]
    if settings.integration.cds_hooks.enabled:
        from integration.cds_hooks import cds_hooks_router

        routers.append(cds_hooks_router(settings.integration.cds_hooks))
    if settings.integration.subscriptions.enabled:
        from integration.subscriptions import subscription_router

        routers.append(subscription_router(settings.integration.subscriptions))
    from serving.views.router import views_router

    routers.append(views_router(settings.views, registry_dir=settings.registry_dir, model_name=settings.model_name))
    return routers
