"""Faults under load: the Ray Serve service scoring for `minutes` while a scorer replica is killed
twice (kill -9) and the ingress replica once, on SQLite and on PostgreSQL.

Clients behave like an EHR interface engine: every note is a new DocumentReference of one of
50 patients; a request that fails (connection reset, 5xx) is retried with the same note until
it is answered (at most `max_attempts` times). At the end the store is read back:

- accepted: notes answered 200 (after retries);
- persisted: notes with a stored score; every accepted note must be among them;
- failed: attempts that got no answer or a 5xx (the faults' visible cost);
- duplicated: notes stored more than once for one model version (must be 0: a retried note is
  answered from the store, never scored into a second row);
- wrong patient: stored rows whose patient is not the note's (must be 0).

`python -m bench faults` writes the figures to docs/benchmarks.md; `--minutes` shortens a trial.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

from bench.report import machine, write_section
from lang1ops.registry import Registry
from lang1ops.settings import Settings, get_settings
from lang1ops.tasks import DEFAULT_CONTRACT
from serving.auth import ApiKey, AuthSettings, Role, hash_api_key
from serving.store import Store
from training.artifacts import zero_shot_artifact

COMMAND = "python -m bench faults"
KEY = "bench-faults-key"
PATIENTS = 50
TEXT = ("HPI: {age} yo with {problem}, admitted from the emergency department. Assessment and plan: "
        "continue treatment, monitor vitals, reassess in the morning. Note {i}.")
PROBLEMS = ["pneumonia", "CHF exacerbation", "sepsis", "COPD exacerbation", "hip fracture", "GI bleed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def note(i: int, run: str) -> tuple[str, str, bytes]:
    """(note id, patient id, DocumentReference body)."""
    note_id, patient = f"{run}-{i}", f"p{i % PATIENTS}"
    text = TEXT.format(age=40 + i % 50, problem=PROBLEMS[i % len(PROBLEMS)], i=i)
    body = json.dumps({"resourceType": "DocumentReference", "id": note_id, "meta": {"versionId": "1"},
                       "status": "current", "subject": {"reference": f"Patient/{patient}"},
                       "context": {"encounter": [{"reference": f"Encounter/e{i}"}]},
                       "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2"}]},
                       "content": [{"attachment": {"contentType": "text/plain",
                                                   "data": base64.b64encode(text.encode()).decode()}}]})
    return note_id, patient, body.encode()


def replica_process(deployment: str) -> psutil.Process | None:
    """The process of a Serve replica of `deployment` among this driver's Ray processes."""
    for process in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if f"ServeReplica:lang1ops:{deployment}" in process.name() + " ".join(process.cmdline()[:1]):
                return process
        except psutil.Error:
            continue
    return None


class Load:
    """Client threads posting new notes until stopped; failures are retried with the same note."""

    def __init__(self, base: str, run: str, clients: int, max_attempts: int = 30):
        self.url = f"{base}/fhir/DocumentReference/$score"
        self.run, self.clients, self.max_attempts = run, clients, max_attempts
        self.headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/fhir+json"}
        self.accepted: dict[str, str] = {}  # note id -> patient
        self.gave_up: list[str] = []
        self.failed_attempts = 0
        self.last_ok = time.monotonic()
        self.outages: list[float] = []  # seconds without any answer, per fault
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(300)

    def _take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _client(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                note_id, patient, body = note(self._take(), self.run)
                for attempt in range(self.max_attempts):
                    try:
                        r = client.post(self.url, content=body, headers=self.headers)
                        if r.status_code == 200:
                            subjects = {e["resource"]["subject"]["reference"] for e in r.json()["entry"]}
                            with self._lock:
                                if subjects != {f"Patient/{patient}"}:
                                    raise AssertionError(f"note {note_id} answered for {subjects}")
                                self.accepted[note_id] = patient
                                self.last_ok = time.monotonic()
                            break
                        if r.status_code < 500:
                            raise AssertionError(f"note {note_id}: HTTP {r.status_code} {r.text[:200]}")
                    except httpx.HTTPError:
                        pass
                    with self._lock:
                        self.failed_attempts += 1
                    time.sleep(min(5.0, 0.5 * 2 ** attempt))
                else:
                    with self._lock:
                        self.gave_up.append(note_id)


def one_backend(store_url: str, label: str, base_dir: Path, root: Path, minutes: float, clients: int,
                max_note_tokens: int = 256) -> dict:
    from ray import serve

    from app.service import run as run_service

    registry = Registry(root / "registry")
    artifact = zero_shot_artifact(base_dir, root / "artifact", DEFAULT_CONTRACT, max_note_tokens, name="lang1-ops")
    registry.promote("lang1-ops", registry.register(artifact, "bench", "faults").version, "bench", "faults")
    port = free_port()
    settings = Settings(home=root / "home", registry_dir=root / "registry", model={"base_model_dir": base_dir},
                        serving={"port": port, "store_url": store_url, "replica_cpus": 1, "torch_threads": 1,
                                 "max_batch_size": 4, "auth": AuthSettings(api_keys=[
                                     ApiKey(name="bench", key_sha256=hash_api_key(KEY), roles={Role.SCORER})])})
    run_service(settings, blocking=False)
    base = f"http://127.0.0.1:{port}"
    from serving.cli import wait_until_ready

    if not wait_until_ready(base, 300):
        raise RuntimeError("service not ready")
    run = f"{label}-{int(time.time())}"
    load = Load(base, run, clients)
    started = time.monotonic()
    load.start()
    plan = [(0.2, "scorer"), (0.45, "ingress"), (0.7, "scorer")]  # fractions of the run
    kills = []
    try:
        for fraction, deployment in plan:
            time.sleep(max(0.0, started + fraction * minutes * 60 - time.monotonic()))
            process = replica_process(deployment)
            if process is None:
                kills.append((deployment, "not found"))
                continue
            killed_at = time.monotonic()
            process.send_signal(signal.SIGKILL)
            kills.append((deployment, f"pid {process.pid} at {killed_at - started:.0f} s"))
            # recovery: the first answer after the kill
            while time.monotonic() - killed_at < 600 and load.last_ok <= killed_at:
                time.sleep(0.5)
            load.outages.append(load.last_ok - killed_at)
        time.sleep(max(0.0, started + minutes * 60 - time.monotonic()))
    finally:
        load.stop()
        elapsed = time.monotonic() - started
        serve.shutdown()
        import ray

        ray.shutdown()
    store = Store(store_url)
    rows = store.scores_between(datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))
    rows = rows[rows["resource_id"].fillna("").str.startswith(run + "-")]
    stored = dict(zip(rows["resource_id"], rows["patient_id"], strict=True))
    per_note = Counter(zip(rows["resource_id"], rows["model_version"], strict=True))
    store.dispose()
    accepted = load.accepted
    return {
        "backend": label, "minutes": elapsed / 60, "accepted": len(accepted),
        "persisted": len(set(stored)), "accepted_not_persisted": len(set(accepted) - set(stored)),
        "failed": load.failed_attempts, "gave_up": len(load.gave_up),
        "duplicated": sum(1 for n in per_note.values() if n > 1),
        "wrong_patient": sum(1 for note_id, patient in stored.items() if note_id in accepted and accepted[note_id] != patient),
        "kills": kills, "outages": [round(o, 1) for o in load.outages],
    }


def run(minutes: float = 10.0, backends: tuple[str, ...] = ("sqlite", "postgresql"), clients: int = 4,
        base_dir: Path | None = None, doc: Path | None = None, max_note_tokens: int = 256) -> str:
    base_dir = Path(base_dir or get_settings().model.base_model_dir)
    results = []
    for backend in backends:
        with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
            root = Path(tmp)
            if backend == "postgresql":
                from tests.postgres import postgres_server

                url = stack.enter_context(postgres_server())
            else:
                url = f"sqlite:///{root / 'store.sqlite'}"
            results.append(one_backend(url, backend, base_dir, root, minutes, clients, max_note_tokens))
            print(results[-1], flush=True)
    rows = "\n".join(
        f"| {r['backend']} | {r['minutes']:.1f} | {r['accepted']} | {r['persisted']} | {r['accepted_not_persisted']} | "
        f"{r['failed']} | {r['gave_up']} | {r['duplicated']} | {r['wrong_patient']} | "
        f"{', '.join(f'{d} ({w})' for d, w in r['kills'])} | {', '.join(f'{o:.0f} s' for o in r['outages'])} |"
        for r in results)
    ok = all(r["accepted_not_persisted"] == 0 and r["duplicated"] == 0 and r["wrong_patient"] == 0 for r in results)
    body = f"""## Faults under load (replicas killed, ingress restarted)

Command: `{COMMAND}` ({minutes:g} minutes per store, {clients} clients posting new notes of {PATIENTS} patients,
retrying a failed note until it is answered; SmolLM2-135M zero-shot model, one scorer replica, 256-token notes).
Machine: {machine()}.

| store | minutes | accepted | persisted | accepted, not persisted | failed attempts | given up | duplicated | wrong patient | kills (kill -9) | time to next answer |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}

Result: {"every accepted note persisted, none stored twice, none for another patient" if ok else "**a guarantee failed: see the row above**"}.
Failed attempts are requests that got no answer or a 5xx while a replica was down; the client's
retry of the same note was answered from the store or scored once.
"""
    write_section("faults", body, doc)
    return body
