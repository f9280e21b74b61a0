"""The command line's shared console: rich progress bars for every long-running command, and
the one-line error every command prints for bad input (`fail`)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

# stderr, so that commands whose stdout is data (JSON, ndjson) stay pipeable.
console = Console(stderr=True)


def fail(message: str) -> typer.Exit:
    """Print a one-line error to stderr; raise the returned Exit (code 2, as for bad usage)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


class _PlainProgress(Progress):
    """Where stderr is not a terminal (a log file, CI, `make demo | tee`) a live bar draws
    nothing until it ends, so a twenty-minute step looks hung: print a plain line instead every
    `every_s` seconds and when a task finishes."""

    every_s = 30.0

    def __init__(self, *columns, **kwargs):
        super().__init__(*columns, **kwargs)
        self._last_line: dict = {}

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._plain_line(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._plain_line(task_id)

    def _plain_line(self, task_id) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        now, finished = time.monotonic(), task.total is not None and task.completed >= task.total
        if finished and self._last_line.get(task_id) == "done":
            return
        if not finished and now - self._last_line.get(task_id, task.start_time or now) < self.every_s:
            return
        self._last_line[task_id] = "done" if finished else now
        done = f"{task.completed:,.0f}" + (f"/{task.total:,.0f} ({task.percentage:.0f}%)" if task.total else "")
        eta = f", about {task.time_remaining:,.0f} s left" if task.time_remaining and not finished else ""
        self.console.print(f"{task.description}: {done}, {task.elapsed or 0:,.0f} s{eta}", highlight=False)


@contextmanager
def progress_bar(transient: bool = False) -> Iterator[Progress]:
    with (Progress if console.is_terminal else _PlainProgress)(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not console.is_terminal and console.quiet,
    ) as progress:
        yield progress


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar (total taken from len() when it exists)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
