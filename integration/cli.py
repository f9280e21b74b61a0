"""`lang1ops integration ...`: the subscription worker and the dead-letter list.

    lang1ops integration worker            # claim and process subscription jobs until Ctrl-C
    lang1ops integration dead-letters      # jobs that failed max_attempts times (no note text)
    lang1ops integration replay 12 15      # put dead jobs back (or --all)
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from integration.work_queue import WorkQueue
from lang1ops.settings.fhir_client import SubscriptionSettings

app = typer.Typer(help="EHR integration: Subscriptions worker and its durable queue.", no_args_is_help=True)
stdout = Console()

StoreOption = Annotated[str | None, typer.Option("--store-url", help="Store URL (default: serving.store_url).")]
QueueOption = Annotated[str, typer.Option("--queue", help="Queue name.")]


def subscription_settings(settings) -> SubscriptionSettings:
    """The Subscriptions section of the one Settings (integration.subscriptions)."""
    return getattr(settings.integration, "subscriptions", None) or SubscriptionSettings()


def _queue(store_url: str | None) -> WorkQueue:
    from lang1ops.settings import get_settings
    from serving.store import Store

    settings = get_settings()
    return WorkQueue(Store(store_url or settings.serving.store_url), subscription_settings(settings).queue)


@app.command("dead-letters")
def dead_letters(store_url: StoreOption = None, queue: QueueOption = "subscription",
                 limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
                 as_json: Annotated[bool, typer.Option("--json", help="One JSON list, for scripts.")] = False) -> None:
    """List dead-lettered jobs: id, key (a FHIR reference), attempts, last error."""
    jobs = _queue(store_url).dead_letters(queue, limit)
    if as_json:
        print(json.dumps([{"id": j.id, "key": j.key, "attempts": j.attempts, "last_error": j.last_error,
                           "updated_at": j.updated_at.isoformat()} for j in jobs]))
        return
    if not jobs:
        stdout.print("no dead letters")
        return
    table = Table("id", "key", "attempts", "last error", "updated")
    for job in jobs:
        table.add_row(str(job.id), job.key, str(job.attempts), job.last_error or "", job.updated_at.isoformat())
    stdout.print(table)


@app.command()
def replay(job_ids: Annotated[list[int] | None, typer.Argument(help="Dead job ids to replay.")] = None,
           all_: Annotated[bool, typer.Option("--all", help="Replay every dead job of the queue.")] = False,
           store_url: StoreOption = None, queue: QueueOption = "subscription") -> None:
    """Put dead-lettered jobs back on the queue with fresh attempts."""
    if not job_ids and not all_:
        stdout.print("give job ids or --all")
        raise typer.Exit(code=2)
    count = _queue(store_url).replay(None if all_ else job_ids, queue)
    stdout.print(f"replayed {count} job(s)")


@app.command()
def worker(store_url: StoreOption = None,
           model: Annotated[str | None, typer.Option(help="Registry alias or version (default: serving.model_ref).")] = None,
           once: Annotated[bool, typer.Option(help="Process what is due now, then exit.")] = False) -> None:
    """Claim subscription jobs: read each DocumentReference, score it, write RiskAssessments back."""
    from integration.fhir_client import FhirClient
    from integration.subscriptions import SubscriptionWorker
    from lang1ops.settings import get_settings
    from serving.backends import LocalBackend, resolve_model
    from serving.service import ScoringService
    from serving.store import Store

    settings = get_settings()
    sub = subscription_settings(settings)
    store = Store(store_url or settings.serving.store_url)
    resolved = resolve_model(model or settings.serving.model_ref, settings.registry_dir, settings.model_name)
    backend = LocalBackend(resolved, settings.model.base_model_dir, settings.serving.device, settings.serving.dtype)
    service = ScoringService(backend, store, settings.serving.api)
    with FhirClient.from_settings(sub.client) as client:
        runner = SubscriptionWorker(service, WorkQueue(store, sub.queue), client, sub)
        if once:
            stdout.print(f"processed {asyncio.run(runner.drain())} job(s)")
            return
        stdout.print(f"worker {runner.worker_id} polling every {sub.poll_interval_s} s; Ctrl-C stops")

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await runner.run(stop)

        asyncio.run(main())
