"""docs/benchmarks.md is rewritten one section at a time: each benchmark owns the text
between its markers, so running one part leaves the others' figures in place."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every figure here is written by `make bench` (or `python -m bench PART`) from a real run;
sections are replaced independently. Figures that depend on the machine are given as ratios
measured in the same run; absolute times hold for the machine named in each section.
"""


@dataclass
class Measurement:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> str:
        return f"{min(self.values):.3g}-{max(self.values):.3g} over {len(self.values)} runs"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    versions = ", ".join(f"{p} {_version(p)}" for p in ("torch", "transformers", "ray", "lang1-ops"))
    # other work on the machine slows every figure: the 1-minute load average is part of the record
    load = os.getloadavg()[0]
    return (f"{cpu}, {os.cpu_count()} cores{', GPU ' + gpu if gpu else ', no GPU'}; Python {platform.python_version()}; "
            f"{versions}; measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load average {load:.1f}")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def write_section(name: str, body: str, doc: Path | None = None) -> Path:
    """Replace section `name` of docs/benchmarks.md (or of `doc`: the smoke test writes elsewhere)."""
    doc = Path(doc or DOC)
    text = doc.read_text() if doc.exists() else HEADER
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return doc
