"""Progress where nobody watches a terminal: plain lines, so a long step never looks hung in a log."""

from __future__ import annotations

from rich.console import Console

from lang1ops import progress


def test_a_log_gets_periodic_lines_and_the_final_count(monkeypatch):
    log = Console(record=True, force_terminal=False, width=120)
    monkeypatch.setattr(progress, "console", log)
    monkeypatch.setattr(progress._PlainProgress, "every_s", 0.0)  # every step is "30 s later"
    with progress.progress_bar() as bar:
        task = bar.add_task("Encoding notes", total=None)
        bar.update(task, total=4)
        for _ in range(4):
            bar.advance(task)
    lines = [line for line in log.export_text().splitlines() if line.startswith("Encoding notes:")]
    assert lines[0].startswith("Encoding notes: 0/4 (0%)") and lines[-1].startswith("Encoding notes: 4/4 (100%)")
    assert len(lines) == 5  # 0, 1, 2, 3 and the finished 4: one line each, the finish once
