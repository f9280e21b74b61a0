"""The overnight batch: score every note of a Bulk Data export.

`run_batch` reads an export directory (from `BulkExportClient.export` or on disk), sends each
note resource through the same `ScoringService.score_note` the API uses (parse, tasks, replay
from the store, score, RiskAssessments, persist with source "bulk"), and writes:

- `RiskAssessment.ndjson`: every RiskAssessment of every scored note (replayed ones too, so a
  rerun rewrites the same file without scoring anything twice);
- `OperationOutcome.ndjson`: one OperationOutcome per note that could not be scored (its id,
  location and the reason; never its text);
- `problems.json`: what the export reader could not use (malformed lines, missing files);
- `summary.json`: counts.

Scoring runs in this process (`LocalBackend`) or over a pool of Ray actors (`RayPoolBackend`),
each holding the model; the service keeps `in_flight` notes outstanding so every worker stays busy.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lang1ops.fhir_source import ProblemLog, iter_resources, load_manifest
from lang1ops.notes import reference_id
from lang1ops.settings.serving import ApiSettings
from lang1ops.tasks import TaskContract
from serving.auth import Principal, Role
from serving.fhir_output import operation_outcome
from serving.service import ApiError, ModelInfo, ScoreReply, ScoringService
from serving.store import Store

NOTE_TYPES = frozenset({"DocumentReference", "DiagnosticReport", "Composition"})
BATCH_PRINCIPAL = Principal(subject="batch-score", roles=frozenset({Role.SCORER}), method="batch")


@dataclass
class BatchSummary:
    run_id: str
    notes: int = 0  # note resources found
    scored: int = 0  # newly scored and stored
    replayed: int = 0  # already in the store (same note version, same model): not scored again
    failed: int = 0
    risk_assessments: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # OperationOutcome issue code -> count
    source_problems: dict[str, int] = field(default_factory=dict)
    model_versions: list[str] = field(default_factory=list)
    workers: int = 0  # 0: in this process
    elapsed_s: float = 0.0
    out_dir: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def count_notes(input_dir: Path) -> int | None:
    """Note resources the manifest declares (None without a manifest): decides Ray or not
    before reading a byte of data."""
    try:
        manifest = load_manifest(input_dir)
    except (ValueError, OSError):
        return None
    if manifest is None:
        return None
    counts = [item.get("count") for item in manifest["output"] if isinstance(item, dict)
              and item.get("type") in NOTE_TYPES]
    return sum(c for c in counts if isinstance(c, int)) if counts else 0


def _binaries(input_dir: Path) -> dict[str, dict]:
    """Binary resources of the export by "Binary/<id>", for notes whose attachment is a url."""
    manifest = None
    try:
        manifest = load_manifest(input_dir)
    except (ValueError, OSError):
        pass
    if manifest is not None and not any(isinstance(i, dict) and i.get("type") == "Binary" for i in manifest["output"]):
        return {}
    found = {}
    for resource, _ in iter_resources(input_dir, ProblemLog()):
        if resource["resourceType"] == "Binary" and isinstance(resource.get("id"), str):
            found[f"Binary/{resource['id']}"] = resource
    return found


def _with_inlined_binaries(resource: dict, binaries: dict[str, dict]) -> dict:
    """The resource with attachment urls that name an exported Binary replaced by its data,
    so scoring needs no server round trip (the API's parser resolves only inline data)."""
    if not binaries or resource.get("resourceType") != "DocumentReference":
        return resource
    content = []
    changed = False
    for item in resource.get("content") or []:
        attachment = item.get("attachment") if isinstance(item, dict) else None
        url = attachment.get("url") if isinstance(attachment, dict) else None
        binary_id = reference_id(url, "Binary") if isinstance(url, str) and "data" not in attachment else None
        binary = binaries.get(f"Binary/{binary_id}") if binary_id else None
        if binary is not None and binary.get("data"):
            attachment = {k: v for k, v in attachment.items() if k != "url"} | {
                "data": binary["data"], "contentType": binary.get("contentType") or attachment.get("contentType")}
            item, changed = {**item, "attachment": attachment}, True
        content.append(item)
    return {**resource, "content": content} if changed else resource


def _notes(input_dir: Path, problems: ProblemLog) -> Iterator[tuple[dict, str]]:
    binaries = _binaries(input_dir)
    for resource, location in iter_resources(input_dir, problems):
        if resource["resourceType"] in NOTE_TYPES:
            yield _with_inlined_binaries(resource, binaries), location


def _failure(resource: dict, location: str, code: str, diagnostics: str) -> dict:
    kind = resource.get("resourceType") if isinstance(resource.get("resourceType"), str) else "Resource"
    rid = resource.get("id") if isinstance(resource.get("id"), str) else None
    failure = operation_outcome(code, f"{kind}/{rid or '(no id)'} at {location}: {diagnostics}")
    failure["issue"][0]["location"] = [location]
    failure["issue"][0]["expression"] = [kind]
    return failure


class _Writer:
    """ndjson out, written to a .part file and renamed at the end: a crashed run leaves no
    half file that looks complete."""

    def __init__(self, path: Path):
        self.path, self.part = path, path.with_name(path.name + ".part")
        self.file = open(self.part, "w", encoding="utf-8", newline="\n")
        self.lines = 0

    def write(self, resource: dict) -> None:
        self.file.write(json.dumps(resource, separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self, keep: bool = True) -> None:
        self.file.close()
        if keep:
            self.part.replace(self.path)
        else:
            self.part.unlink(missing_ok=True)


async def _score_all(service: ScoringService, notes: Iterator[tuple[dict, str]], in_flight: int, run_id: str,
                     risks: _Writer, outcomes: _Writer, summary: BatchSummary, max_examples: int,
                     on_note: Callable[[], None] | None) -> None:
    failures: Counter[str] = Counter()
    versions: set[str] = set()
    pending: set[asyncio.Task] = set()

    async def one(resource: dict, location: str) -> None:
        try:
            resources, version, replayed = await service.score_note(resource, BATCH_PRINCIPAL, None, "bulk", run_id)
        except ApiError as err:
            code, diagnostics = err.code, err.diagnostics
        except Exception as exc:  # a worker crash costs one note, not the run; the type only (no data)
            code, diagnostics = "exception", f"scoring failed ({type(exc).__name__})"
        else:
            for r in resources:
                risks.write(r)
            summary.risk_assessments += len(resources)
            versions.add(version)
            if replayed:
                summary.replayed += 1
            else:
                summary.scored += 1
            return
        summary.failed += 1
        failures[code] += 1
        if summary.failed <= max_examples:
            outcomes.write(_failure(resource, location, code, diagnostics))

    for resource, location in notes:
        summary.notes += 1
        task = asyncio.create_task(one(resource, location))
        task.add_done_callback(lambda _: on_note() if on_note else None)
        pending.add(task)
        if len(pending) >= in_flight:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if pending:
        await asyncio.wait(pending)
    summary.failures = dict(sorted(failures.items()))
    summary.model_versions = sorted(versions)


def run_batch(input_dir: Path, out_dir: Path, backend, store: Store, api_settings: ApiSettings | None = None, *,
              in_flight: int = 1, workers: int = 0, max_failure_examples: int = 1000,
              on_note: Callable[[], None] | None = None) -> BatchSummary:
    """Score every note under `input_dir` with `backend` (LocalBackend or RayPoolBackend),
    store the scores and write the outputs to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = f"bulk-{uuid.uuid4().hex[:16]}"
    summary = BatchSummary(run_id=run_id, workers=workers, out_dir=str(out_dir))
    service = ScoringService(backend, store, api_settings or ApiSettings())
    problems = ProblemLog()
    risks = _Writer(out_dir / "RiskAssessment.ndjson")
    outcomes = _Writer(out_dir / "OperationOutcome.ndjson")
    started = time.perf_counter()
    ok = False
    try:
        asyncio.run(_score_all(service, _notes(Path(input_dir), problems), max(1, in_flight), run_id, risks, outcomes,
                               summary, max_failure_examples, on_note))
        ok = True
    finally:
        risks.close(keep=ok)
        outcomes.close(keep=ok)
    summary.elapsed_s = round(time.perf_counter() - started, 3)
    summary.source_problems = problems.counts()
    (out_dir / "problems.json").write_text(json.dumps(problems.to_dict(), indent=2, default=str) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    store.audit(action="batch-score", request_id=run_id, actor=BATCH_PRINCIPAL.subject, role="scorer",
                endpoint="lang1ops batch score", resource_type="DocumentReference",
                outcome="ok" if not summary.failed else "processing", latency_ms=summary.elapsed_s * 1000,
                detail=f"notes {summary.notes}, scored {summary.scored}, replayed {summary.replayed}, "
                       f"failed {summary.failed}")
    return summary


# --- Ray: a pool of scorer actors ---------------------------------------------------------------


class _ScorerWorker:
    """One model copy in one Ray worker process (the class is wrapped by ray.remote lazily)."""

    def __init__(self, path: str, version: str, base_fallback: str | None, device: str, dtype: str, threads: int,
                 content_hash: str | None = None):
        import torch

        from serving.backends import ActiveModel, ResolvedModel

        torch.set_num_threads(max(1, threads))  # one worker per reserved CPU, not every core each
        self.active = ActiveModel()
        self.active.load(ResolvedModel(version, Path(path), content_hash), Path(base_fallback) if base_fallback else None,
                         device, dtype, max_batch=8)

    def score(self, text: str, tasks: list[str]) -> dict:
        from serving.backends import score_batch

        model, scorer = self.active.snapshot()
        return score_batch(model, scorer, [text], [tasks])[0]

    def info(self) -> dict:
        from serving.backends import info_of

        model, _ = self.active.snapshot()
        return info_of(model)


class RayPoolBackend:
    """A ScoringBackend over `workers` Ray actors, each with its own copy of the model; notes
    go round robin. Ray must be initialised (lang1ops.ray_local.ensure_ray)."""

    def __init__(self, resolved, workers: int, *, base_fallback: Path | None = None, device: str = "cpu",
                 dtype: str = "auto", worker_cpus: float = 1.0):
        import ray

        remote = ray.remote(num_cpus=worker_cpus)(_ScorerWorker)
        threads = max(1, int(worker_cpus))
        self.actors = [remote.remote(str(resolved.path), resolved.version, str(base_fallback) if base_fallback else None,
                                     device, dtype, threads, resolved.content_hash) for _ in range(max(1, workers))]
        self._next = itertools.cycle(self.actors)
        info = ray.get(self.actors[0].info.remote())  # waits until the first model is loaded
        self._info = ModelInfo(info["name"], info["version"], info["kind"], TaskContract.model_validate(info["contract"]))
        ray.get([a.info.remote() for a in self.actors[1:]])

    async def score(self, text: str, tasks: list[str]) -> ScoreReply:
        return ScoreReply(**await next(self._next).score.remote(text, tasks))

    async def model_info(self) -> ModelInfo:
        return self._info

    async def contract_for(self, version: str) -> TaskContract:
        if version != self._info.version:
            raise LookupError(f"version {version} is not loaded")
        return self._info.contract

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)

