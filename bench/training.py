"""How fast heads retrain on 2 CPU cores: from scratch (every note encoded) and warm (the
encodings cached, as they are for notes the service has scored)."""

from __future__ import annotations

import tempfile
import time
from datetime import date
from pathlib import Path

from bench.report import machine, write_section
from lang1ops.settings import get_settings
from lang1ops.synthetic import HospitalSpec, generate_hospital
from training.dataset import Dataset, DatasetSpec, Window, build_dataset
from training.heads import EncodingCache, HeadsConfig, train_heads

COMMAND = "python -m bench training"


def run(train_notes: int = 2000, val_notes: int = 500, base_dir: Path | None = None, patients: int = 3000,
        max_note_tokens: int = 512, layers: tuple[int, ...] = (1, 2, 4), doc: Path | None = None) -> str:
    base = Path(base_dir or get_settings().model.base_model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_hospital(HospitalSpec(name="Bench Training", patients=patients, seed=3, shift_from=date(2024, 1, 1)),
                          root / "fhir")
        spec = DatasetSpec(Window.parse("2019-01-01:2022-12-31", "train"), [Window.parse("2023-01-01:2024-12-31", "later")])
        build_dataset(root / "fhir", root / "dataset", spec)
        dataset = Dataset.load(root / "dataset")
        cache = EncodingCache(root / "cache.sqlite")
        config = HeadsConfig(layers=layers, max_notes={"train": train_notes, "val": val_notes}, max_note_tokens=max_note_tokens)
        timings = {}
        for run_name in ("cold", "warm"):
            start = time.perf_counter()
            train_heads(dataset, base, root / f"heads-{run_name}", config, cache=cache)
            timings[run_name] = time.perf_counter() - start
    notes = train_notes + val_notes
    body = f"""## Retraining heads (five tasks)

Command: `{COMMAND}` (SmolLM2-135M base, 512-token notes, candidate layers 1, 2, 4, {train_notes:,} training and
{val_notes:,} validation notes of a generated hospital). Machine: {machine()}.

| run | wall time | per note |
|---|---|---|
| cold: every note encoded, heads fitted for 3 layers x 6 C values x 5 tasks | {timings['cold'] / 60:.1f} min | {timings['cold'] / notes:.3f} s |
| warm: encodings cached (notes the service already scored), heads refitted | {timings['warm']:.0f} s | {timings['warm'] / notes:.4f} s |

Target "retrain all five tasks on a few thousand notes in minutes": {"met" if timings['cold'] < 15 * 60 else "MISSED"}
(cold {timings['cold'] / 60:.1f} min, warm {timings['warm']:.0f} s).
"""
    write_section("training", body, doc)
    return body
