"""The temporal-shift scenario: a champion goes stale, monitoring notices, the loop fixes it.

1. a synthetic hospital with the generator's temporal shift (new template, vocabulary, case
   mix and care programs from `shift_from`);
2. a champion (heads on the frozen base, reading the note's n-grams too: the loop's default
   trainer) trained on the pre-shift years, promoted, with its drift reference;
3. notes scored through the service API (FastAPI app, API key, store): held-out patients of
   the champion's own training years (the unshifted window), then the post-shift months;
   their outcomes are fed back with `record_outcome`;
4. drift checks: the unshifted window against the reference (expected: no drift) and the
   post-shift months (expected: drift); performance of the stale champion on the post-shift
   months;
5. one pass of the retraining loop, triggered by the drift run: the fresh labeled window is
   pulled from the Bulk export, a candidate trained, gated on the newest held-out months and
   promoted;
6. the newest notes scored through the service again: the service answers with the new
   champion (it follows the registry), and its AUROC there is compared with the stale model's.

The service here runs in process (`RegistryFollowingBackend`: the scorer reloads when the
registry's champion changes, as `serving.app.watch_registry` makes the Ray Serve replicas do).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd

from lang1ops.settings.drift_loop import DriftLoopSettings

SCENARIO_KEY = "scenario-scorer-key"


@dataclass
class ScenarioConfig:
    workdir: Path
    base_dir: Path
    patients: int = 1500
    seed: int = 7
    shift_from: date = date(2024, 1, 1)
    max_note_tokens: int = 256
    heads_layers: tuple[int, ...] = (1, 2, 4)
    max_train_notes: int = 10000  # per split; the loop's default, above what a scenario hospital holds
    model_name: str = "lang1-ops"
    score_before: int = 300  # held-out pre-shift notes scored through the service (sampled)
    score_after: int = 400  # post-shift notes before the newest window (sampled)
    dtype: str = "auto"  # as training encodes (the encoding cache does not key on dtype)


@dataclass
class ScenarioResult:
    champion: str
    new_champion: str | None
    drift_before: dict
    drift_after: dict
    cycle: dict
    stale_auroc: dict[str, float]  # the stale champion on the held-out newest post-shift notes
    new_auroc: dict[str, float]  # the candidate on the same notes (the gate's comparison)
    served_auroc: dict[str, float]  # the new champion, from the service's stored scores and the outcomes
    served_versions_after: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    audit: list[dict] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(self.__dict__, default=str))


class RegistryFollowingBackend:
    """A `LocalBackend` that loads the registry's new champion before the next request."""

    def __init__(self, registry_dir: Path, name: str, base_fallback: Path | None, dtype: str = "float32"):
        from serving.backends import LocalBackend, resolve_model

        self.registry_dir, self.name, self.base_fallback, self.dtype = registry_dir, name, base_fallback, dtype
        self._resolve = resolve_model
        self.local = LocalBackend(resolve_model("champion", registry_dir, name), base_fallback, dtype=dtype)

    def _follow(self) -> None:
        resolved = self._resolve("champion", self.registry_dir, self.name)
        if resolved.version != self.local.active.version:
            self.local.active.load(resolved, self.base_fallback, "cpu", self.dtype, max_batch=8)

    async def score(self, text, tasks):
        self._follow()
        return await self.local.score(text, tasks)

    async def model_info(self):
        self._follow()
        return await self.local.model_info()

    async def contract_for(self, version):
        return await self.local.contract_for(version)


def _documents(fhir: Path, ids: set[str]) -> dict[str, dict]:
    out = {}
    with (fhir / "DocumentReference.ndjson").open() as f:
        for line in f:
            resource = json.loads(line)
            if f"DocumentReference/{resource['id']}" in ids:
                out[f"DocumentReference/{resource['id']}"] = resource
    return out


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return frame if len(frame) <= n else frame.sample(n, random_state=seed).sort_values("note_date")


def _aware(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def run_scenario(config: ScenarioConfig, settings: DriftLoopSettings, say=print) -> ScenarioResult:
    from fastapi.testclient import TestClient

    from lang1ops.progress import track
    from lang1ops.registry import Registry
    from lang1ops.settings.serving import ApiSettings
    from lang1ops.synthetic import HospitalSpec, generate_hospital
    from monitoring.descriptors import texts_by_sha
    from monitoring.drift import build_reference, run_drift_check
    from monitoring.history import MonitoringHistory
    from monitoring.performance import evaluate_window, groups_from_dataset
    from monitoring.retraining import BulkExportSource, RetrainingLoop, default_trainer
    from serving.api import create_api
    from serving.auth import ApiKey, Authenticator, AuthSettings, Role, hash_api_key
    from serving.store import Store
    from training.dataset import Dataset, DatasetSpec, Window, build_dataset
    from training.heads import EncodingCache

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    work = Path(config.workdir)
    work.mkdir(parents=True, exist_ok=True)
    # a rerun starts again from the stale champion: the last run's registry (whose champion is
    # the promoted candidate), store (whose idempotent replays would answer with the old run's
    # versions) and monitoring runs go; the hospital, the dataset and the encodings are kept
    for state in ("registry", "monitoring", "models"):
        shutil.rmtree(work / state, ignore_errors=True)
    for store_file in work.glob("store.sqlite*"):
        store_file.unlink()
    settings = settings.model_copy(update={"runs_dir": work / "monitoring"})
    # 1. the hospital
    fhir = work / "fhir"
    if not (fhir / "manifest.json").exists():
        say(f"generating a hospital of {config.patients} patients, temporal shift from {config.shift_from}")
        generate_hospital(HospitalSpec(name="Shifted General", patients=config.patients, seed=config.seed,
                                       shift_from=config.shift_from), fhir)
    year = config.shift_from.year
    dataset_dir = work / "dataset"
    if not (dataset_dir / "dataset.json").exists():
        build_dataset(fhir, dataset_dir, DatasetSpec(
            Window("train", date(2019, 1, 1), date(year - 2, 12, 31)),
            [Window("before", date(year - 1, 1, 1), date(year - 1, 12, 31)),
             Window("after", config.shift_from, date(year, 12, 31))]))
    dataset = Dataset.load(dataset_dir)
    lap("hospital and dataset")

    # 2. the champion, trained before the shift
    registry = Registry(work / "registry")
    cache = EncodingCache(work / "cache" / "encodings.sqlite")
    trainer = default_trainer(settings.model_copy(update={"heads_layers": list(config.heads_layers),
                                                          "max_train_notes": config.max_train_notes, "trainer": "heads"}),
                              config.base_dir, config.max_note_tokens, config.model_name, cache)
    if "champion" not in registry.aliases(config.model_name):
        artifact = trainer(dataset, work / "models" / "champion", {"trigger": "scenario: pre-shift champion"})
        version = registry.register(artifact, "scenario", "pre-shift champion")
        registry.promote(config.model_name, version.version, "scenario", "pre-shift champion", expected_champion="")
    champion = registry.get(config.model_name, "champion")
    reference_dir = settings.runs_dir / "references" / config.model_name / champion.version
    from monitoring.drift import DriftReference

    reference = (DriftReference.load(reference_dir) if (reference_dir / "reference.json").exists() else
                 build_reference(champion.path, dataset, reference_dir, settings, champion.version, config.base_dir, cache))
    lap("champion and reference")

    # 3. the service; notes before and after the shift scored through it, outcomes fed back
    store = Store(f"sqlite:///{work / 'store.sqlite'}")
    history = MonitoringHistory(store)
    auth = Authenticator(AuthSettings(api_keys=[ApiKey(name="ehr", key_sha256=hash_api_key(SCENARIO_KEY),
                                                       roles={Role.SCORER})]))
    backend = RegistryFollowingBackend(work / "registry", config.model_name, config.base_dir, config.dtype)
    app = create_api(backend, store, auth, ApiSettings())
    evaluation_start = date(year, 12, 31) - timedelta(days=settings.evaluation_days - 1)
    notes = dataset.notes
    # unshifted: patients held out of the champion's training, from its own years
    before = _sample(notes[notes["split"] == "test"], config.score_before, config.seed)
    after = notes[notes["split"] == "after"]
    after_drift = _sample(after[pd.to_datetime(after["discharged"], utc=True) < _aware(evaluation_start)],
                          config.score_after, config.seed)
    newest = after[pd.to_datetime(after["discharged"], utc=True) >= _aware(evaluation_start)]
    documents = _documents(fhir, set(notes["note_id"]))

    def score_through_service(client: TestClient, frame: pd.DataFrame) -> list[str]:
        versions = []
        for note_id in track(frame["note_id"].tolist(), "scoring notes through the service"):
            r = client.post("/fhir/DocumentReference/$score", content=json.dumps(documents[note_id]),
                            headers={"Authorization": f"Bearer {SCENARIO_KEY}", "Content-Type": "application/fhir+json"})
            if r.status_code != 200:
                raise RuntimeError(f"scoring {note_id} answered HTTP {r.status_code}")
            versions.append(r.headers.get("X-Model-Version"))
        return versions

    def feed_outcomes(frame: pd.DataFrame) -> None:
        labels = dataset.labels[dataset.labels["note_id"].isin(frame["note_id"])].merge(
            notes[["note_id", "patient_id", "encounter_id", "discharged"]], on="note_id")
        for row in labels.drop_duplicates(["encounter_id", "task"]).itertuples():
            store.record_outcome(row.patient_id, row.encounter_id, row.task, int(row.label),
                                 pd.Timestamp(row.discharged).to_pydatetime().astimezone(UTC), "scenario")

    with TestClient(app) as client:
        say(f"scoring {len(before)} held-out pre-shift notes and {len(after_drift)} post-shift notes through the service")
        score_through_service(client, pd.concat([before, after_drift]))
        feed_outcomes(pd.concat([before, after_drift]))
        lap("scored before/after through the service")

        # 4. drift and performance
        texts = texts_by_sha(dataset_dir)
        drift_before = run_drift_check(store, reference, _aware(date(2019, 1, 1)), _aware(date(year - 1, 1, 1)),
                                       settings, by="note_date", texts=texts, out_dir=settings.runs_dir, history=history)
        drift_after = run_drift_check(store, reference, _aware(config.shift_from), _aware(evaluation_start), settings,
                                      by="note_date", texts=texts, out_dir=settings.runs_dir, history=history)
        say(f"drift before the shift: {drift_before.detected}; after the shift: {drift_after.detected}")
        groups = groups_from_dataset(dataset_dir)
        contract = dataset.contract
        evaluate_window(store, _aware(config.shift_from), _aware(evaluation_start), contract, settings,
                        groups=groups, out_dir=settings.runs_dir, history=history)
        lap("drift and performance")

        # 5. the retraining loop, triggered by the drift run
        loop = RetrainingLoop(settings, store, registry, config.model_name, BulkExportSource(fhir, settings), trainer,
                              base_fallback=config.base_dir, cache=cache, history=history)
        cycle = loop.run_once()
        say(f"retraining cycle {cycle.cycle}: {cycle.outcome}")
        if cycle.table:
            say(cycle.table)
        lap("retraining cycle")

        # 6. the newest notes through the service, now answered by the new champion
        served_versions = score_through_service(client, newest)
        feed_outcomes(newest)
        lap("newest notes through the service")
    new_perf = evaluate_window(store, _aware(evaluation_start), _aware(date(year + 1, 1, 1)), contract,
                               settings, groups=groups, out_dir=settings.runs_dir, history=history)
    # both models on the same held-out newest notes (the gate's paired comparison)
    comparisons = (cycle.decision or {}).get("comparisons", [])
    stale = {c["task"]: c["champion_auroc"] for c in comparisons}
    new = {c["task"]: c["candidate_auroc"] for c in comparisons}
    served = {t: ev.auroc.estimate for t, ev in new_perf.evaluations.items()}
    return ScenarioResult(
        champion=champion.version, new_champion=registry.get(config.model_name, "champion").version,
        drift_before=drift_before.summary(), drift_after=drift_after.summary(),
        cycle={"cycle": cycle.cycle, "outcome": cycle.outcome, "triggers": [t.to_dict() for t in cycle.triggers],
               "candidate": cycle.candidate, "decision": cycle.decision, "table": cycle.table},
        stale_auroc=stale, new_auroc=new, served_auroc=served, served_versions_after=sorted(set(served_versions)),
        timings=timings,
        audit=registry.audit(config.model_name), events=history.events(cycle.cycle))


def fast_settings() -> DriftLoopSettings:
    """The `make demo` fast path: small windows, fewer resamples, no cooldown."""
    return DriftLoopSettings(min_labeled_notes=100, cooldown_hours=0, gate_resamples=500, performance_resamples=300,
                             min_labels_per_task=20, reference_max_notes=1000, evaluation_days=92)
