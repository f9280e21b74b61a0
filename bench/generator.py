"""How fast the synthetic hospital writes its export (target: 10,000 encounters in under a minute)."""

from __future__ import annotations

import tempfile
import time
from datetime import date
from pathlib import Path

from bench.report import Measurement, machine, write_section
from lang1ops.synthetic import HospitalSpec, generate_hospital

COMMAND = "python -m bench generator"


def run(repeats: int = 3, patients: int = 4000, doc: Path | None = None) -> str:
    seconds, encounters = [], []
    for i in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            spec = HospitalSpec(name="Bench General", patients=patients, seed=i, shift_from=date(2024, 1, 1))
            start = time.perf_counter()
            summary = generate_hospital(spec, Path(tmp))
            seconds.append(time.perf_counter() - start)
            encounters.append(summary.encounters)
    rate = Measurement([e / s for e, s in zip(encounters, seconds, strict=True)])
    per_10k = 10_000 / rate.median
    body = f"""## Synthetic hospital generator

Command: `{COMMAND}` ({patients:,} patients, 2019-2024, shift on; {min(encounters):,}-{max(encounters):,} encounters per run).
Machine: {machine()}.

| figure | median | spread |
|---|---|---|
| encounters per second | {rate.median:,.0f} | {rate.spread} |
| seconds for 10,000 encounters | {per_10k:.1f} | target < 60: {"met" if per_10k < 60 else "MISSED"} |
"""
    write_section("generator", body, doc)
    return body
