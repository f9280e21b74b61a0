"""`lang1ops serve`: run the scoring service locally (Ray on 127.0.0.1), or print its Serve config."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from lang1ops.settings import Settings, get_settings

stdout = Console()


def pid_file() -> Path:
    return Path(get_settings().home) / "serve.pid"


def serve_command(run_service: Callable[..., None], service_config: Callable[[Settings], dict]) -> Callable[..., None]:
    """The `serve` command for a service: `run_service(settings, on_start=...)` runs it and
    `service_config(settings)` gives its Serve config (the top floor passes the whole service,
    `app.service`, so this package needs no import of the areas above it)."""

    def serve(
        port: Annotated[int | None, typer.Option(help="HTTP port (default: settings, 8000).")] = None,
        model: Annotated[str | None, typer.Option(help="Registry alias or version to serve (default: champion).")] = None,
        detach: Annotated[bool, typer.Option(help="Run in the background; stop with `lang1ops serve --stop`.")] = False,
        stop: Annotated[bool, typer.Option(help="Stop a service started with --detach.")] = False,
        print_config: Annotated[bool, typer.Option("--print-config", help="Print the Ray Serve config (YAML-compatible JSON).")] = False,
    ) -> None:
        """Serve the registry's champion over FHIR and JSON; follow promotions by hot reload."""
        settings = get_settings()
        if port:
            settings.serving.port = port
        if model:
            settings.serving.model_ref = model
        if print_config:
            stdout.print_json(json.dumps(service_config(settings)))
            return
        if stop:
            stop_detached()
            return
        if detach:
            start_detached(settings.serving.port, model)
            return

        def started(version: str) -> None:
            base = f"http://{settings.serving.host}:{settings.serving.port}"
            stdout.print(f"serving {settings.model_name} {version} at {base}  (FHIR base {base}/fhir, docs {base}/docs)")
            stdout.print("following the registry's champion; Ctrl-C stops")

        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            run_service(settings, on_start=started)
        except KeyboardInterrupt:
            pass
        finally:
            from ray import serve as ray_serve

            try:
                ray_serve.shutdown()
            finally:
                import ray

                ray.shutdown()

    return serve


def start_detached(port: int, model: str | None) -> None:
    path = pid_file()
    if path.exists() and _alive(int(path.read_text())):
        stdout.print(f"already running (pid {path.read_text().strip()}); `lang1ops serve --stop` stops it")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.with_suffix(".log").open("ab")
    args = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)] + (["--model", model] if model else [])
    process = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True, env=os.environ.copy())
    path.write_text(str(process.pid))
    if wait_until_ready(f"http://127.0.0.1:{port}", 240, alive=lambda: process.poll() is None):
        stdout.print(f"service ready on http://127.0.0.1:{port} (pid {process.pid}, log {path.with_suffix('.log')})")
        return
    stdout.print("service did not become ready in 240 s; see the log")
    raise typer.Exit(code=1)


def wait_until_ready(base_url: str, timeout_s: float, alive=lambda: True, poll_s: float = 0.5) -> bool:
    """Poll `GET {base_url}/readyz` until it answers 200 (True), the timeout passes or `alive()`
    turns false (False): a service's first seconds are refused connections, then 503s."""
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline and alive():
        try:
            if httpx.get(f"{base_url}/readyz", timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    return False


def stop_detached() -> None:
    """Stop the detached service and every process it started (Ray's GCS, raylet, agents and
    workers, some in process groups of their own): nothing of it may keep a port open."""
    import psutil

    path = pid_file()
    if not path.exists():
        stdout.print("no detached service")
        return
    pid = int(path.read_text())
    if _alive(pid):
        try:
            family = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        os.killpg(pid, signal.SIGTERM)
        for _ in range(60):
            if not _alive(pid):
                break
            time.sleep(0.5)
        else:
            os.killpg(pid, signal.SIGKILL)
        _, left = psutil.wait_procs(family, timeout=15)
        for process in left:  # e.g. Ray workers in their own process groups
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(left, timeout=10)
    path.unlink(missing_ok=True)
    stdout.print(f"stopped (pid {pid})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def retention(
    dry_run: Annotated[bool, typer.Option(help="Count what would be deleted; delete nothing.")] = False,
) -> None:
    """Delete scores older than `serving.retention_days` (a daily job: the Helm chart's retention CronJob)."""
    from datetime import UTC, datetime, timedelta

    from serving.store import Store

    settings = get_settings()
    days = settings.serving.retention_days
    if days is None:
        stdout.print("serving.retention_days is not set: scores are kept")
        return
    cutoff = datetime.now(UTC) - timedelta(days=days)
    with Store(settings.serving.store_url) as store:
        if dry_run:
            stdout.print(f"{store.count_scores_before(cutoff)} scores scored before {cutoff:%Y-%m-%d %H:%M} UTC "
                         "would be deleted")
            return
        deleted = store.purge_scores(cutoff)
        store.audit(action="retention", actor="retention-job", outcome="ok",
                    detail=f"{deleted} scores scored before {cutoff.isoformat()} deleted ({days} days)")
    stdout.print(f"deleted {deleted} scores scored before {cutoff:%Y-%m-%d %H:%M} UTC (retention {days} days)")
