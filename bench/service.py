"""The service's overhead and latency: the same scorer through HTTP and Ray Serve, on
127.0.0.1, against the scorer in process.

Throughput: a bounded number of single-note requests from enough concurrent clients to keep
the scorer's batches full, compared with the in-process scorer on the same notes and batch
size. Latency: single-note requests one at a time (low load), p50/p95/p99.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from bench.report import Measurement, machine, write_section
from bench.scoring import long_notes
from lang1ops.base_model import load_tokenizer
from lang1ops.registry import Registry
from lang1ops.scorer import MultitaskScorer, load_model
from lang1ops.settings import Settings, get_settings
from lang1ops.tasks import DEFAULT_CONTRACT
from serving.auth import ApiKey, AuthSettings, Role, hash_api_key
from training.artifacts import zero_shot_artifact

COMMAND = "python -m bench service"
KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def document(i: int, text: str) -> bytes:
    import base64

    return json.dumps({
        "resourceType": "DocumentReference", "id": f"bench-{i}-{time.time_ns()}", "status": "current",
        "subject": {"reference": "Patient/bench"},
        "content": [{"attachment": {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode()}}],
    }).encode()


def run(base_dir: Path | None = None, n_notes: int = 48, clients: int = 16, latency_requests: int = 30, batch: int = 8,
        repeats: int = 3, min_tokens: int = 512, doc: Path | None = None, kind: str = "mc") -> str:
    from ray import serve

    from app.service import run as run_service

    base_dir = Path(base_dir or get_settings().model.base_model_dir)
    notes = long_notes(n_notes, load_tokenizer(base_dir), min_tokens)
    tasks = ",".join(DEFAULT_CONTRACT.names)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        artifact = zero_shot_artifact(base_dir, root / "artifact", DEFAULT_CONTRACT, 512, name="lang1-ops")
        scorer = MultitaskScorer(load_model(artifact), max_batch_notes=batch)
        scorer.score(notes[:2])
        inproc = []
        for _ in range(repeats):
            start = time.perf_counter()
            scorer.score(notes)
            inproc.append(len(notes) / (time.perf_counter() - start))
        del scorer

        registry = Registry(root / "registry")
        version = registry.register(artifact, "bench", "service benchmark")
        registry.promote("lang1-ops", version.version, "bench", "service benchmark")
        port = free_port()
        settings = Settings(home=root / "home", registry_dir=root / "registry", model={"base_model_dir": base_dir},
                            serving={"port": port, "store_url": f"sqlite:///{root / 'store.sqlite'}", "replica_cpus": 1.5,
                                     "torch_threads": 2, "max_batch_size": batch, "max_ongoing_requests": 4 * batch,
                                     "auth": AuthSettings(api_keys=[ApiKey(name="bench", key_sha256=hash_api_key(KEY),
                                                                           roles={Role.SCORER})])})
        run_service(settings, blocking=False)
        url = f"http://127.0.0.1:{port}/fhir/DocumentReference/$score?task={tasks}"
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/fhir+json"}
        try:
            with httpx.Client(timeout=600) as client:
                wait_ready(client, port)
                client.post(url, content=document(0, notes[0]), headers=headers)  # warm-up

                def one(i: int) -> float:
                    start = time.perf_counter()
                    r = client.post(url, content=document(i, notes[i % len(notes)]), headers=headers)
                    if r.status_code != 200:
                        raise RuntimeError(f"HTTP {r.status_code}")
                    return time.perf_counter() - start

                served = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    with ThreadPoolExecutor(clients) as pool:
                        list(pool.map(one, range(len(notes))))
                    served.append(len(notes) / (time.perf_counter() - start))
                latencies = [one(i) for i in range(latency_requests)]
        finally:
            serve.shutdown()
            import ray

            ray.shutdown()
    a, b = Measurement(inproc), Measurement(served)
    ratio = b.median / a.median
    p50, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 95, 99))
    body = f"""## Service overhead and latency (HTTP + Ray Serve on 127.0.0.1)

Command: `{COMMAND}` ({len(notes)} notes of {min_tokens}+ tokens, all five tasks per request, SmolLM2-135M mc
model, one scorer replica with 2 torch threads, `@serve.batch` size {batch}, {clients} concurrent clients).
Machine: {machine()}.

| figure | median | spread |
|---|---|---|
| in-process scorer, batch {batch} (notes/s) | {a.median:.3f} | {a.spread} |
| through HTTP and Ray Serve at saturation (notes/s) | {b.median:.3f} | {b.spread} |
| service / in-process | **{100 * ratio:.0f}%** | target >= 90%: {"met" if ratio >= 0.9 else "missed"} |

Single-note latency at low load (one request at a time, {latency_requests} requests): p50 {p50:.2f} s,
p95 {p95:.2f} s, p99 {p99:.2f} s on this machine.
"""
    write_section("service", body, doc)
    return body


def wait_ready(client: httpx.Client, port: int, timeout: float = 240) -> None:
    from serving.cli import wait_until_ready

    if not wait_until_ready(f"http://127.0.0.1:{port}", timeout):
        raise RuntimeError("service not ready")
