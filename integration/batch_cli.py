"""`lang1ops batch ...`: pull a Bulk Data export, score it overnight, feed true outcomes.

    lang1ops batch export   --export-url URL --out DIR [--type T]... [--since ISO]
    lang1ops batch score    (--export-url URL | --input DIR) --out DIR [--workers N]
    lang1ops batch outcomes (--export-url URL | --input DIR) [--as-of ISO]

Results go to stdout; progress to stderr (lang1ops.progress).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lang1ops.progress import console as progress_console
from lang1ops.progress import progress_bar
from lang1ops.settings.bulk import BulkSettings

app = typer.Typer(no_args_is_help=True, help="Bulk Data export, overnight batch scoring and the outcomes feed.")
stdout = Console()

ExportUrl = Annotated[str | None, typer.Option("--export-url", help="FHIR base URL to run $export against.")]
InputDir = Annotated[Path | None, typer.Option("--input", help="A Bulk Data export directory already on disk.")]
Types = Annotated[list[str] | None, typer.Option("--type", help="Resource type to export (_type); repeatable.")]
Since = Annotated[str | None, typer.Option("--since", help="Only resources changed after this instant (_since).")]
Level = Annotated[str, typer.Option("--level", help="system, patient or group.")]
Group = Annotated[str | None, typer.Option("--group", help="Group id for --level group.")]
StoreUrl = Annotated[str | None, typer.Option("--store-url", help="SQLAlchemy URL of the store (default: settings).")]


def _fail(message: str) -> typer.Exit:
    progress_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def _settings():
    from lang1ops.settings import get_settings

    return get_settings()


def _bulk_settings(settings) -> BulkSettings:
    """The Bulk section wherever the lead mounted it (integration.bulk or bulk), else defaults."""
    for holder in (getattr(settings, "integration", None), settings):
        found = getattr(holder, "bulk", None)
        if isinstance(found, BulkSettings):
            return found
    return BulkSettings()


def _outbound_auth(settings):
    """SMART Backend Services or static bearer auth, from the one outbound FHIR client's settings
    (`integration.subscriptions.client`, shared by write-back, Bulk Data and the outcomes feed)."""
    from integration.smart_auth import outbound_auth

    return outbound_auth(settings.integration.subscriptions.client)


def _data_dir(export_url: str | None, input_dir: Path | None, pull) -> Path:
    """The Bulk data a command reads: exactly one of a fresh export (`pull()` downloads it) or a
    directory already on disk."""
    if (export_url is None) == (input_dir is None):
        raise _fail("give exactly one of --export-url and --input")
    if export_url:
        return pull()
    if not input_dir.exists():
        raise _fail(f"--input {input_dir} does not exist")
    return input_dir


def _instant(value: str | None, option: str = "--since") -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _fail(f"{option} {value!r} is not an ISO 8601 instant") from None
    if when.tzinfo is None:
        raise _fail(f"{option} needs a time zone (e.g. 2025-01-01T00:00:00Z)")
    return when


def pull_export(url: str, out: Path, types: list[str] | None, since: datetime | None, level: str,
                group: str | None, settings) -> Path:
    """Run one export into `out`, with a spinner showing the server's X-Progress."""
    from integration.bulk_export import BulkExportClient, BulkExportError

    bulk = _bulk_settings(settings)
    with progress_bar(transient=True) as progress:
        task = progress.add_task(f"$export from {url}", total=None)
        try:
            with BulkExportClient(url, bulk.export, auth=_outbound_auth(settings),
                                  on_progress=lambda p: progress.update(task, description=f"$export: {p}")) as client:
                result = client.export(out, types=types, since=since, level=level, group_id=group)
        except (BulkExportError, ValueError) as err:
            raise _fail(str(err)) from None
    files = ", ".join(f"{f.type} {f.lines}" for f in result.output) or "no files"
    progress_console.print(f"exported to {out}: {files}; {len(result.errors)} error file(s)", soft_wrap=True)
    return out


@app.command("export")
def export_command(
    export_url: ExportUrl = None,
    out: Annotated[Path, typer.Option("--out", help="Directory for the ndjson files and manifest.json.")] = Path("."),
    type_: Types = None, since: Since = None, level: Level = "system", group: Group = None,
) -> None:
    """Download a Bulk Data export (e.g. fresh data for `lang1ops data build`)."""
    settings = _settings()
    url = export_url or _bulk_settings(settings).export.base_url
    if not url:
        raise _fail("give --export-url (or set the Bulk export base_url setting)")
    pull_export(url, out, type_, _instant(since), level, group, settings)
    stdout.print(str(out))


@app.command("score")
def score_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for RiskAssessment.ndjson and the reports.")],
    export_url: ExportUrl = None, input_dir: InputDir = None, type_: Types = None, since: Since = None,
    level: Level = "system", group: Group = None,
    model: Annotated[str | None, typer.Option(help="Registry alias/version or artifact directory (default: "
                                                   "the serving model_ref).")] = None,
    workers: Annotated[int | None, typer.Option(help="Ray workers (0: in this process; default: by size).")] = None,
    store_url: StoreUrl = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bfloat16 or float32 (default: settings).")] = None,
) -> None:
    """Score every note of an export; write RiskAssessment ndjson and the store (source "bulk")."""
    settings = _settings()
    bulk = _bulk_settings(settings)
    input_dir = _data_dir(export_url, input_dir, lambda: pull_export(
        export_url, out / "export", type_ or bulk.batch.note_types, _instant(since), level, group, settings))

    from integration.batch_score import RayPoolBackend, count_notes, run_batch
    from serving.backends import LocalBackend, resolve_model
    from serving.store import Store

    declared = count_notes(input_dir)
    if workers is None:
        import os

        big = declared is not None and declared > bulk.batch.ray_threshold_notes
        workers = max(1, (os.cpu_count() or 1) // max(1, int(bulk.batch.worker_cpus))) if big else 0
    try:
        resolved = resolve_model(model or settings.serving.model_ref, settings.registry_dir, settings.model_name)
    except (LookupError, FileNotFoundError, ValueError) as err:
        raise _fail(f"model not found: {err}") from None
    base = settings.model.base_model_dir
    dtype = dtype or settings.serving.dtype
    store = Store(store_url or settings.serving.store_url)
    if workers > 0:
        from lang1ops.ray_local import ensure_ray

        ensure_ray()
        backend = RayPoolBackend(resolved, workers, base_fallback=base, device=settings.serving.device, dtype=dtype,
                                 worker_cpus=bulk.batch.worker_cpus)
        in_flight = workers * bulk.batch.in_flight_per_worker
    else:
        backend = LocalBackend(resolved, base, device=settings.serving.device, dtype=dtype)
        in_flight = 1  # one model in this process scores one note at a time
    try:
        with progress_bar() as progress:
            task = progress.add_task(f"scoring with {resolved.version}" + (f" on {workers} Ray workers" if workers else ""),
                                     total=declared)
            summary = run_batch(input_dir, out, backend, store, settings.serving.api, in_flight=in_flight,
                                workers=workers, max_failure_examples=bulk.batch.max_failure_examples,
                                on_note=lambda: progress.advance(task))
    finally:
        if workers > 0:
            backend.close()
        store.dispose()
    stdout.print_json(json.dumps(summary.to_dict()))


@app.command("outcomes")
def outcomes_command(
    export_url: ExportUrl = None, input_dir: InputDir = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where to download the export (with --export-url).")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="The data's cut-off (default: the export's "
                                                              "transactionTime).")] = None,
    all_encounters: Annotated[bool, typer.Option("--all-encounters", help="Also encounters nobody scored.")] = False,
    store_url: StoreUrl = None,
) -> None:
    """Record true outcomes (discharges, deaths, claims) for the scored encounters."""
    settings = _settings()
    bulk = _bulk_settings(settings)
    input_dir = _data_dir(export_url, input_dir, lambda: pull_export(
        export_url, out or bulk.work_dir / f"outcomes-{datetime.now().strftime('%Y%m%dT%H%M%S')}",
        bulk.outcomes.resource_types, None, "system", None, settings))
    from integration.outcomes_feed import feed_outcomes
    from serving.store import Store

    feed_settings = bulk.outcomes
    if all_encounters:
        feed_settings = feed_settings.model_copy(update={"only_scored_encounters": False})
    store = Store(store_url or settings.serving.store_url)
    try:
        summary = feed_outcomes(input_dir, store, feed_settings, as_of=_instant(as_of, "--as-of"))
    finally:
        store.dispose()
    stdout.print_json(json.dumps(summary.to_dict(), default=str))
