"""`lang1ops views ...`: load the inpatient census from FHIR Encounters, print the pages' URLs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Operational views: readmission worklist, bed board, MLOps page.", no_args_is_help=True)
stdout = Console()


@app.command("load-census")
def load_census(
    directory: Annotated[Path, typer.Argument(help="A FHIR Bulk Data export (or directory of ndjson) with Encounters.")],
    store_url: Annotated[str | None, typer.Option(help="Store URL (default: settings serving.store_url).")] = None,
) -> None:
    """Load inpatient Encounters (unit, admission and discharge times) into the census table."""
    from lang1ops.settings import get_settings
    from serving.store import Store
    from serving.views.census import Census

    settings = get_settings()
    if not directory.exists():
        raise typer.BadParameter(f"{directory} does not exist", param_hint="DIRECTORY")
    store = Store(store_url or settings.serving.store_url)
    try:
        report, problems = Census(store.engine).load_directory(directory, settings.views.inpatient_classes)
    finally:
        store.dispose()
    table = Table("what", "count", title="Census load")
    table.add_row("inpatient encounters loaded", str(report.loaded))
    for reason, n in sorted(report.skipped.items()):
        table.add_row(f"skipped: {reason}", str(n))
    for reason, n in problems.items():
        table.add_row(f"unreadable: {reason}", str(n))
    stdout.print(table)


@app.command("urls")
def urls(base: Annotated[str | None, typer.Option(help="Service base URL (default: from settings).")] = None) -> None:
    """Print the URLs of the pages (as `make demo` ends)."""
    from lang1ops.settings import get_settings

    settings = get_settings()
    root = (base or f"http://{settings.serving.host}:{settings.serving.port}").rstrip("/")
    for path, what in (("/ui/worklist", "Readmission worklist"), ("/ui/beds", "Bed board"), ("/ui/mlops", "MLOps")):
        stdout.print(f"{what}: {root}{path}")
