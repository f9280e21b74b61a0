"""`lang1ops monitor drift | performance | retrain | loop | scenario`.

`monitor retrain` is one pass of the loop (triggers, cooldown, pull, train, gate, promote or
refuse): the entry point of a Kubernetes CronJob or a RayJob. `monitor loop` repeats the
scheduled drift check, the performance window and that pass every `loop_interval_s`.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lang1ops.progress import console as progress_console
from lang1ops.progress import fail

monitor_app = typer.Typer(no_args_is_help=True, help="Drift checks, performance once outcomes arrive, the retraining loop.")
stdout = Console()



def _context():
    """(Settings, DriftLoopSettings, Store, Registry) from the one Settings object."""
    from lang1ops.registry import Registry
    from lang1ops.settings import get_settings
    from lang1ops.settings.drift_loop import DriftLoopSettings
    from serving.store import Store

    settings = get_settings()
    loop = getattr(settings.monitoring, "loop", None) or DriftLoopSettings()
    return settings, loop, Store(settings.serving.store_url), Registry(settings.registry_dir)


def _time(value: str | None, default: datetime) -> datetime:
    if value is None:
        return default
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO date or datetime") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def drift_once(settings, loop, store, registry, start: datetime, end: datetime, by: str, texts_from: Path | None):
    from monitoring.descriptors import texts_by_sha
    from monitoring.drift import reference_for, run_drift_check
    from monitoring.history import MonitoringHistory
    from training.heads import EncodingCache

    champion = registry.get(settings.model_name, "champion")
    reference = reference_for(loop, settings.model_name, champion, settings.model.base_model_dir,
                              EncodingCache(settings.encoding_cache))
    texts = texts_by_sha(texts_from) if texts_from else None
    return run_drift_check(store, reference, start, end, loop, by=by, texts=texts, out_dir=Path(loop.runs_dir) / "drift",
                           history=MonitoringHistory(store))


@monitor_app.command("drift")
def drift(
    since: Annotated[str | None, typer.Option(help="Window start (ISO); default: drift_window_days ago.")] = None,
    until: Annotated[str | None, typer.Option(help="Window end (ISO, exclusive); default: now.")] = None,
    by: Annotated[str | None, typer.Option(help="scored_at or note_date (default: settings).")] = None,
    texts_from: Annotated[Path | None, typer.Option(exists=True, help="FHIR Bulk export or dataset directory whose "
                                                    "notes give the text descriptors (matched by hash).")] = None,
) -> None:
    """Compare the current window of scored notes with the champion's reference (Evidently)."""
    settings, loop, store, registry = _context()
    now = datetime.now(UTC)
    end = _time(until, now)
    start = _time(since, end - timedelta(days=loop.drift_window_days))
    try:
        result = drift_once(settings, loop, store, registry, start, end, by or loop.drift_window_by, texts_from)
    except (KeyError, FileNotFoundError, ValueError) as error:
        raise fail(str(error)) from None
    table = Table(title=f"Drift {start:%Y-%m-%d}..{end:%Y-%m-%d}: {result.n_current} notes of {result.model_version} "
                        f"vs {result.n_reference} reference notes")
    for column in ("check", "detected", "score", "threshold", "columns drifted", "method"):
        table.add_column(column)
    for name, check in result.checks.items():
        table.add_row(name, "yes" if check.detected else "no", f"{check.score:.3f}", f"{check.threshold:.3f}",
                      f"{check.drifted}/{check.columns}", check.method)
    stdout.print(table)
    stdout.print(f"report: {result.report_dir}/report.html ({result.duration_s:.1f} s)")


@monitor_app.command("performance")
def performance(
    since: Annotated[str | None, typer.Option(help="First window start (ISO); default: one window back.")] = None,
    until: Annotated[str | None, typer.Option(help="Last window end (ISO); default: now.")] = None,
    window_days: Annotated[int | None, typer.Option(help="Window width (default: settings).")] = None,
    by: Annotated[str, typer.Option(help="note_date or scored_at.")] = "note_date",
    groups_from: Annotated[Path | None, typer.Option(exists=True, help="Dataset directory with subgroup attributes.")] = None,
) -> None:
    """AUROC [95% CI], ECE and subgroups per task for each window, from scores and outcomes."""
    from lang1ops.artifact import load_artifact_contract
    from monitoring.history import MonitoringHistory
    from monitoring.performance import evaluate_window, groups_from_dataset, rolling_windows

    settings, loop, store, registry = _context()
    days = window_days or loop.performance_window_days
    end = _time(until, datetime.now(UTC))
    start = _time(since, end - timedelta(days=days))
    contract = load_artifact_contract(registry.get(settings.model_name, "champion").path)
    groups = groups_from_dataset(groups_from) if groups_from else None
    history = MonitoringHistory(store)
    table = Table(title="Performance once outcomes arrived")
    for column in ("window", "version", "task", "n", "AUROC [95% CI]", "ECE"):
        table.add_column(column)
    for a, b in rolling_windows(start, end, days):
        result = evaluate_window(store, a, b, contract, loop, by=by, groups=groups,
                                 out_dir=Path(loop.runs_dir) / "performance", history=history)
        for task, ev in result.evaluations.items():
            i = ev.auroc
            table.add_row(result.label, str(result.model_version), task, str(ev.n),
                          f"{i.estimate:.3f} [{i.low:.3f}, {i.high:.3f}]", f"{ev.ece:.3f}")
    stdout.print(table)


def _loop(settings, loop_settings, store, registry, source: Path | None, evaluation_split: str | None):
    from monitoring.history import MonitoringHistory
    from monitoring.retraining import BulkExportSource, DatasetSource, RetrainingLoop, default_trainer
    from training.heads import EncodingCache

    source = source or loop_settings.bulk_source
    if source is None:
        raise fail("no labeled source: pass --source (FHIR Bulk export or dataset directory) or set bulk_source")
    if (Path(source) / "notes.parquet").exists():
        if not evaluation_split:
            raise fail("a dataset source needs --evaluation-split (its newest temporal split)")
        labeled = DatasetSource(Path(source), evaluation_split)
    else:
        labeled = BulkExportSource(Path(source), loop_settings)
    cache = EncodingCache(settings.encoding_cache)
    trainer = default_trainer(loop_settings, settings.model.base_model_dir, settings.model.max_note_tokens,
                              settings.model_name, cache)
    return RetrainingLoop(loop_settings, store, registry, settings.model_name, labeled, trainer,
                          base_fallback=settings.model.base_model_dir, cache=cache, history=MonitoringHistory(store))


def _print_cycle(result) -> None:
    stdout.print(f"cycle {result.cycle}: {result.outcome}"
                 + (f" (champion {result.champion}, candidate {result.candidate})" if result.candidate else ""))
    for trigger in result.triggers:
        stdout.print(f"  trigger {trigger.kind}: {trigger.reason}", soft_wrap=True)
    if result.table:
        stdout.print(result.table)


@monitor_app.command("retrain")
def retrain(
    source: Annotated[Path | None, typer.Option(help="FHIR Bulk export or dataset directory (default: settings).")] = None,
    evaluation_split: Annotated[str | None, typer.Option(help="Dataset source: the held-out newest split.")] = None,
    reason: Annotated[str | None, typer.Option(help="Retrain now for this reason (a manual trigger; skips the cooldown).")] = None,
) -> None:
    """One pass of the retraining loop (a CronJob / RayJob entry point)."""
    settings, loop_settings, store, registry = _context()
    loop = _loop(settings, loop_settings, store, registry, source, evaluation_split)
    _print_cycle(loop.run_once(manual=reason))


@monitor_app.command("loop")
def loop_command(
    source: Annotated[Path | None, typer.Option(help="FHIR Bulk export or dataset directory (default: settings).")] = None,
    evaluation_split: Annotated[str | None, typer.Option(help="Dataset source: the held-out newest split.")] = None,
    texts_from: Annotated[Path | None, typer.Option(exists=True, help="Text descriptors source for drift checks.")] = None,
    passes: Annotated[int, typer.Option(help="Stop after N passes (0: run until interrupted).")] = 0,
) -> None:
    """Run continuously: drift check, performance window, then the retraining pass."""
    from lang1ops.artifact import load_artifact_contract
    from monitoring.history import MonitoringHistory
    from monitoring.performance import evaluate_window

    settings, loop_settings, store, registry = _context()
    loop = _loop(settings, loop_settings, store, registry, source, evaluation_split)
    done = 0
    while passes == 0 or done < passes:
        now = datetime.now(UTC)
        try:
            drift_once(settings, loop_settings, store, registry, now - timedelta(days=loop_settings.drift_window_days),
                       now, loop_settings.drift_window_by, texts_from)
        except (KeyError, FileNotFoundError, ValueError) as error:
            progress_console.print(f"drift check skipped: {error}", soft_wrap=True)
        try:
            contract = load_artifact_contract(registry.get(settings.model_name, "champion").path)
            evaluate_window(store, now - timedelta(days=loop_settings.performance_window_days), now, contract,
                            loop_settings, by="scored_at", out_dir=Path(loop_settings.runs_dir) / "performance",
                            history=MonitoringHistory(store))
        except KeyError as error:
            progress_console.print(f"performance skipped: {error}", soft_wrap=True)
        _print_cycle(loop.run_once())
        done += 1
        if passes == 0 or done < passes:
            time.sleep(loop_settings.loop_interval_s)


@monitor_app.command("scenario")
def scenario(
    workdir: Annotated[Path, typer.Option(help="Where the scenario writes its hospital, models and reports.")] = Path("var/scenario"),
    fast: Annotated[bool, typer.Option(help="The make-demo path: a small hospital, early layers, fewer resamples.")] = False,
    base: Annotated[Path | None, typer.Option(help="Base model directory (default: settings).")] = None,
    patients: Annotated[int | None, typer.Option(help="Patients in the hospital.")] = None,
) -> None:
    """The temporal-shift scenario: stale champion, drift detected, retrained, promoted, better."""
    from lang1ops.settings import get_settings
    from lang1ops.settings.drift_loop import DriftLoopSettings
    from monitoring.scenario import ScenarioConfig, fast_settings, run_scenario

    settings = get_settings()
    config = ScenarioConfig(workdir=workdir, base_dir=base or settings.model.base_model_dir,
                            patients=patients or (1200 if fast else 3000),
                            max_note_tokens=min(256, settings.model.max_note_tokens) if fast else settings.model.max_note_tokens,
                            heads_layers=(1, 2, 4) if fast else (1, 2, 4, 8))
    # four years of fresh data, as the loop's default: a two-year window (half of it after the
    # shift) was tried on SmolLM2 and scored worse (mean AUROC 0.593 vs 0.613, docs/monitoring.md).
    # Every labeled note of the window trains (the loop's default cap is above this hospital's
    # size): capped at 1,200 notes the candidate saw ~300 post-shift notes and was refused.
    loop_settings = fast_settings() if fast else DriftLoopSettings(cooldown_hours=0)
    result = run_scenario(config, loop_settings,
                          say=lambda message: progress_console.print(message, soft_wrap=True))
    (Path(workdir) / "scenario.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    stdout.print(f"stale champion {result.champion} -> new champion {result.new_champion}; "
                 f"the service answered the newest notes with {', '.join(result.served_versions_after)}")
    table = Table(title="AUROC on the newest post-shift notes (held out)")
    for column in ("task", f"stale {result.champion}", f"new {result.new_champion}", "new, from the service's scores"):
        table.add_column(column)

    def cell(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for task in result.stale_auroc:
        table.add_row(task, cell(result.stale_auroc[task]), cell(result.new_auroc.get(task)),
                      cell(result.served_auroc.get(task)))
    stdout.print(table)
    stdout.print(f"written to {workdir}/scenario.json; timings {result.timings}")
