"""What the MLOps page shows: the serving model, the registry's history (registrations,
promotions, refusals), recent drift checks, and performance over time from delayed outcomes.

Drift checks, the retraining loop's events and performance by month belong to monitoring, a
floor above serving: the service's assembly (`app.service`) hands this page monitoring's
history reader (`history`: store -> an object with `drift_runs` and `events`) and its
`performance` function (per binary task and month of scoring, the AUROC of the stored
probabilities against the outcomes that have arrived). Without them, or before the first drift
check, the page says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from lang1ops.tasks import TaskContract
from serving.store import Store

log = logging.getLogger(__name__)


def registry_summary(registry_dir: Path | None, model_name: str, limit: int) -> dict:
    """Aliases, versions and the newest audit events of one model line (empty when no registry)."""
    if registry_dir is None or not Path(registry_dir).exists():
        return {"available": False, "aliases": {}, "versions": [], "events": []}
    from lang1ops.registry import Registry

    registry = Registry(Path(registry_dir))
    if model_name not in registry.names():
        return {"available": True, "aliases": {}, "versions": [], "events": []}
    versions = [{"version": v.version, "kind": v.manifest.get("kind"), "content_hash": v.content_hash[:12]}
                for v in registry.versions(model_name)]
    events = [{k: e.get(k) for k in ("time", "actor", "action", "version", "alias", "previous", "reason")}
              for e in reversed(registry.audit(model_name))][:limit]
    return {"available": True, "aliases": registry.aliases(model_name), "versions": versions[::-1][:limit],
            "events": events}


HistoryReader = Callable[[Store], Any]  # store -> reader with drift_runs(limit) and events(limit=)
Performance = Callable[[Store, TaskContract, datetime, int], list[dict]]


def _report_html(report_dir: str | None) -> str | None:
    """The Evidently HTML file of a drift run's report directory (the newest one), if any."""
    if not report_dir or not Path(report_dir).is_dir():
        return None
    pages = sorted(Path(report_dir).glob("*.html"), key=lambda p: p.stat().st_mtime, reverse=True)
    return str(pages[0]) if pages else None


def drift_runs(store: Store, limit: int, history: HistoryReader | None = None) -> list[dict]:
    """Recent drift checks (id, time, drifted, summary, html_path), newest first; [] without history."""
    if history is None:
        return []
    try:
        history = history(store)
        runs = history.drift_runs(limit)
    except Exception as exc:  # the page must render even when the monitoring tables are not there yet
        log.warning("drift history unavailable: %s", type(exc).__name__)
        return []
    out = []
    for run in runs:
        checks = run.get("checks") or {}
        drifted = sorted(name for name, c in checks.items() if isinstance(c, dict) and c.get("detected"))
        summary = (f"{run.get('n_current')} notes vs {run.get('n_reference')} reference"
                   + (f"; drift in {', '.join(drifted)}" if drifted else ""))
        out.append(_plain({"id": run.get("id"), "time": run.get("checked_at"), "drifted": bool(run.get("detected")),
                           "model_version": run.get("model_version"), "summary": summary,
                           "html_path": _report_html(run.get("report_dir"))}))
    return out


def loop_events(store: Store, limit: int, history: HistoryReader | None = None) -> list[dict]:
    """The retraining loop's events (trigger, train, evaluate, promote, refuse, ...), newest first."""
    if history is None:
        return []
    try:
        events = history(store).events(limit=limit)
    except Exception as exc:
        log.warning("loop history unavailable: %s", type(exc).__name__)
        return []
    keys = ("time", "cycle", "step", "outcome", "champion", "candidate")
    return [_plain({k: e.get(k) for k in keys}) for e in reversed(events)]  # history gives oldest first


def _plain(record: object) -> dict:
    data = dict(record) if isinstance(record, dict) else dict(getattr(record, "__dict__", {}))
    return {k: (v.isoformat() if isinstance(v, datetime) else v if isinstance(v, str | int | float | bool | None) else str(v))
            for k, v in data.items() if not k.startswith("_")}


def performance_by_month(store: Store, contract: TaskContract, now: datetime, months: int = 12,
                         performance: Performance | None = None) -> list[dict]:
    """Per binary task and month of scoring: n labelled encounters, prevalence, AUROC (None with
    one class) and the model version, as monitoring computes every window; [] without it."""
    return performance(store, contract, now, months) if performance is not None else []
