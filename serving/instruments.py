"""The service's Prometheus metrics, correct across Ray processes.

The ingress and every scorer replica are separate processes (Ray actors). Each one records into
prometheus_client's multiprocess files under `PROMETHEUS_MULTIPROC_DIR` (set for the actors by
`serving.app` through their `runtime_env`, so it is in the environment before prometheus_client
is first imported there), and the ingress's `/metrics` merges every process's files
(`MultiProcessCollector`): two scorer replicas scoring 3 and 4 notes show 7. Without the
variable (tests, a single process) the same metrics live in the default registry.

Label values are route templates, task names, option letters, OperationOutcome codes, model
versions: never a patient id, note id, raw path or text.

Multiprocess files are per machine: on a multi-node Ray cluster each node's scorer replicas
write to their own node's directory, so run the ingress beside them or scrape every node.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger("lang1ops.metrics")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED_ROUTE = "unmatched"  # requests that matched no route (404s): their raw paths are not labels

if os.environ.get(MULTIPROC_ENV):  # unlabelled metrics open their file below, at import
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

# -- the ingress: HTTP requests ---------------------------------------------------------------

REQUESTS = Counter("lang1ops_requests", "HTTP requests answered, by route template, method and status.",
                   ["route", "method", "status"])
REQUEST_ERRORS = Counter("lang1ops_request_errors",
                         "Errors answered as an OperationOutcome, by route template and issue code (a failing entry "
                         "of a batch Bundle counts once).", ["route", "code"])
REQUEST_LATENCY = Histogram("lang1ops_request_duration_seconds", "Time from request to response, by route template.",
                            ["route", "method"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

# -- the scorer replicas ----------------------------------------------------------------------

# `deployment` is scorer (the champion) or shadow (the challenger, answers never returned)
BATCH_SIZE = Histogram("lang1ops_scorer_batch_size", "Notes per scorer batch.", ["deployment"],
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128))
BATCH_LATENCY = Histogram("lang1ops_scorer_batch_duration_seconds", "Model time per scorer batch.", ["deployment"],
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
NOTES_SCORED = Counter("lang1ops_notes_scored", "Notes scored by the model (not replays from the store), per task.",
                       ["deployment", "task"])
SCORER_ERRORS = Counter("lang1ops_scorer_errors", "Scorer batches that raised, by exception type.",
                        ["deployment", "error"])
PROBABILITY = Histogram("lang1ops_predicted_probability",
                        "Predicted probabilities per task: of the positive option for binary tasks, of every option "
                        "(letter) for binned tasks.", ["deployment", "task", "option"],
                        buckets=(0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99))
# max over processes, kept after a process exits: "when did any replica last score a note"
LAST_SCORED = Gauge("lang1ops_last_note_scored_timestamp_seconds", "Unix time a note was last scored (any deployment).",
                    multiprocess_mode="max")
# live* modes: a dead process's value is dropped (prune_dead_processes), so these describe now
MODEL_INFO = Gauge("lang1ops_model_info", "1 for each model version a live scorer replica serves.",
                   ["deployment", "name", "version", "kind"], multiprocess_mode="livemax")
SCORER_REPLICAS = Gauge("lang1ops_scorer_replicas", "Live scorer replica processes with a model loaded.",
                        ["deployment"], multiprocess_mode="livesum")

_extra_collectors: list[Any] = []


# -- recording --------------------------------------------------------------------------------


def route_template(scope: dict) -> str:
    """The matched route's template (`/fhir/DocumentReference/$score`), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    REQUEST_LATENCY.labels(route, method).observe(seconds)


def observe_error(route: str, code: str) -> None:
    REQUEST_ERRORS.labels(route, code).inc()


def observe_batch(deployment: str, contract: Any, tasks: Sequence[Sequence[str]], replies: Sequence[dict],
                  seconds: float) -> None:
    """One scored batch: its size and time, notes per task, and the predicted probabilities.
    `contract` is the TaskContract of the version that scored it; replies as `score_batch`'s."""
    BATCH_SIZE.labels(deployment).observe(len(replies))
    BATCH_LATENCY.labels(deployment).observe(seconds)
    for asked, reply in zip(tasks, replies, strict=True):
        for task in asked:
            NOTES_SCORED.labels(deployment, task).inc()
            probs = reply["probabilities"].get(task)
            if probs is None:
                continue
            spec = contract.task(task)
            if spec.binary:
                PROBABILITY.labels(deployment, task, spec.options[spec.positive_option].letter).observe(probs[spec.positive_option])
            else:
                for option, p in zip(spec.options, probs, strict=False):
                    PROBABILITY.labels(deployment, task, option.letter).observe(p)
    if replies:
        LAST_SCORED.set(time.time())


def observe_scorer_error(deployment: str, exc: BaseException) -> None:
    SCORER_ERRORS.labels(deployment, type(exc).__name__).inc()


def set_serving_model(deployment: str, name: str, version: str, kind: str, previous: tuple[str, str, str] | None) -> None:
    """This replica now serves `version`; the version it served before (name, version, kind)
    drops to 0 (multiprocess files cannot remove a series)."""
    if previous is not None and previous != (name, version, kind):
        MODEL_INFO.labels(deployment, *previous).set(0)
    MODEL_INFO.labels(deployment, name, version, kind).set(1)
    SCORER_REPLICAS.labels(deployment).set(1)


# -- the multiprocess directory ---------------------------------------------------------------


def multiprocess_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())
    return Path(value) if value else None


def service_metrics_env(home: Path, clear: bool = False) -> dict[str, str]:
    """The runtime_env variables for the service's Ray actors: the driver's own
    PROMETHEUS_MULTIPROC_DIR if it set one, else `<home>/prometheus-multiproc`."""
    return prepare_multiprocess_dir(multiprocess_dir() or Path(home) / "prometheus-multiproc", clear)


def prepare_multiprocess_dir(path: Path, clear: bool) -> dict[str, str]:
    """Create the directory the Ray actors share and return the env vars for their runtime_env.
    `clear` at a fresh start of the service: files of an earlier run's processes would
    otherwise add their old counts (prometheus_client's documented requirement)."""
    path = Path(path).resolve()
    if clear and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return {MULTIPROC_ENV: str(path)}


_LIVE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def prune_dead_processes(path: Path) -> list[int]:
    """Drop the live-gauge files of processes that no longer exist on this machine (a replica
    that crashed or was scaled down), as `mark_process_dead` would have. Returns their pids."""
    dead = set()
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = _LIVE_FILE.search(os.path.basename(file))
        if match and not _alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        for file in glob.glob(os.path.join(path, f"gauge_live*_{pid}.db")):
            try:
                os.remove(file)
            except FileNotFoundError:
                pass
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


# -- exposition -------------------------------------------------------------------------------


def register_collector(collector: Any) -> None:
    """Add a collector (an object with `collect()` yielding metric families, e.g. the store's
    drift/performance status) to what `/metrics` serves, in every mode. Collected only when
    scraped, in the process that serves `/metrics` (the ingress)."""
    if collector not in _extra_collectors:
        _extra_collectors.append(collector)


def unregister_collector(collector: Any) -> None:
    if collector in _extra_collectors:
        _extra_collectors.remove(collector)


class _Union:
    """The service's own metrics, then each extra collector; a failing extra collector (say the
    store is unreachable) loses only its own families, not the whole scrape."""

    def __init__(self, base: Any, extra: Iterable[Any]):
        self.base, self.extra = base, list(extra)

    def collect(self):
        yield from self.base.collect()
        for collector in self.extra:
            try:
                families = list(collector.collect())
            except Exception as exc:
                log.error("metrics collector %s failed: %s", type(collector).__name__, type(exc).__name__)
                continue
            yield from families


def exposition() -> bytes:
    """The text `/metrics` serves: every process's metrics (multiprocess mode) or this process's
    default registry, plus the registered extra collectors."""
    directory = multiprocess_dir()
    if directory is not None:
        prune_dead_processes(directory)
        merged = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(merged, path=str(directory))
        base: Any = merged
    else:
        base = REGISTRY
    return generate_latest(_Union(base, _extra_collectors))  # type: ignore[arg-type]
