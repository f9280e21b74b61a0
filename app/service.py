"""The whole service: the scoring API (serving/) with every other area's endpoints mounted.

Each area owns its router (CDS Hooks and Subscriptions in integration/, the Alertmanager
webhook and the MLOps page's performance figures in monitoring/, the operational views in
serving/views/); serving cannot import the areas above it, so this top-floor module hands
them to `serving.app` as the `extensions` factory. `app_builder(args)` is the import path of
the Serve config files and KubeRay (`app.service:app_builder`); `lang1ops serve` runs the same
application locally (`run`).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from lang1ops.settings import Settings

IMPORT_PATH = "app.service:app_builder"


def extension_routers(settings: Settings) -> list[APIRouter]:
    from monitoring.alerts import alertmanager_router
    from monitoring.history import MonitoringHistory
    from monitoring.performance import monthly_auroc
    from monitoring.status_metrics import MonitoringStatusCollector
    from serving.instruments import register_collector
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

    routers.append(views_router(settings.views, registry_dir=settings.registry_dir, model_name=settings.model_name,
                                history=MonitoringHistory, performance=monthly_auroc))
    return routers


def app_builder(args: dict):
    """Serve config entry point: `args` are Settings fields (as in the Helm chart's values)."""
    from serving.app import build_app

    return build_app(Settings.model_validate(args or {}), extensions=extension_routers)


def run(settings: Settings, blocking: bool = True, on_start=None, stop: asyncio.Event | None = None) -> None:
    """Start local Ray and Serve with the whole service and follow the registry (serving.app.run)."""
    from serving.app import run as run_serving

    run_serving(settings, blocking=blocking, on_start=on_start, stop=stop, extensions=extension_routers)


def serve_config(settings: Settings) -> dict:
    """The Ray Serve config of the whole service (`serve deploy`, KubeRay `serveConfigV2`)."""
    from serving.app import serve_config as serving_config

    return serving_config(settings, import_path=IMPORT_PATH)
