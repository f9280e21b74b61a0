"""The service's overhead and latency: the same scorer through HTTP and Ray Serve, on
127.0.0.1, against the scorer in process.

Throughput: single-note requests from closed-loop clients, two full batches in flight per
replica, counted in steady state; compared with the in-process scorer on the same notes and
batch size, each in two layouts of the cores (one 2-thread scorer, two 1-thread scorers), the
best against the best. Where the CPU goes: every process's CPU time over the loaded run, by
role. Latency: single-note requests one at a time (low load), p50/p95/p99.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


def process_role(proc) -> str:
    """Which part of the service a process is, from its Ray process title."""
    try:
        title = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - a process that ended or is not ours
        return "other"
    if proc.pid == os.getpid():
        return "load generator (this process)"
    for needle, role in (("scorer", "scorer replica"), ("ingress", "ingress replica (FastAPI)"),
                         ("ProxyActor", "HTTP proxy"), ("ServeController", "Serve controller"),
                         ("raylet", "Ray system (raylet, GCS, workers)"), ("gcs_server", "Ray system (raylet, GCS, workers)"),
                         ("ray", "Ray system (raylet, GCS, workers)")):
        if needle in title:
            return role
    return "other"


def cpu_seconds_by_role() -> dict[str, float]:
    """CPU seconds (user + system) used so far by every process of this user, by role."""
    import psutil

    totals: dict[str, float] = {}
    for proc in psutil.process_iter():
        try:
            if proc.uids().real != os.getuid():
                continue
            times = proc.cpu_times()
            role = process_role(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


def batch_counts(exposition: str) -> tuple[float, float]:
    """(notes scored in batches, batches) so far, from the service's own histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    notes = batches = 0.0
    for family in text_string_to_metric_families(exposition):
        if family.name == "lang1ops_scorer_batch_size":
            for sample in family.samples:
                if sample.labels.get("deployment") == "scorer":
                    notes += sample.value if sample.name.endswith("_sum") else 0
                    batches += sample.value if sample.name.endswith("_count") else 0
    return notes, batches


@dataclass(frozen=True)
class Layout:
    """How the cores are split among scorer replicas (or in-process scorers)."""

    copies: int
    threads: int

    def __str__(self) -> str:
        return f"{self.copies} x {self.threads} torch thread{'s' if self.threads > 1 else ''}"


LAYOUTS = (Layout(1, 2), Layout(2, 1))


def score_in_process(artifact: Path, notes: list[str], batch: int, threads: int, repeats: int, barrier=None,
                     results=None) -> tuple[list[float], float]:
    """Notes/s over `repeats` passes and CPU seconds per note, the scorer called from the main thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        scorer = MultitaskScorer(load_model(artifact), max_batch_notes=batch)
        scorer.score(notes[:2])
        if barrier is not None:
            barrier.wait()  # the copies start together: they share the cores, as replicas do
        rates, cpu_start = [], sum(os.times()[:2])
        for _ in range(repeats):
            start = time.perf_counter()
            scorer.score(notes)
            rates.append(len(notes) / (time.perf_counter() - start))
        measured = rates, (sum(os.times()[:2]) - cpu_start) / (repeats * len(notes))
    finally:
        torch.set_num_threads(before)
    if results is not None:
        results.put(measured)
    return measured


def measure_in_process(artifact: Path, notes: list[str], batch: int, layout: Layout, repeats: int) -> tuple[list[float], float]:
    """The scorer without the service: one copy here, or several processes at once (the notes/s add up)."""
    if layout.copies == 1:
        return score_in_process(artifact, notes, batch, layout.threads, repeats)
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(layout.copies), context.Queue()
    workers = [context.Process(target=score_in_process, args=(artifact, notes, batch, layout.threads, repeats, barrier,
                                                              results)) for _ in range(layout.copies)]
    for worker in workers:
        worker.start()
    measured = [results.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join()
    rates = [sum(rate) for rate in zip(*(m[0] for m in measured), strict=True)]
    return rates, sum(m[1] for m in measured) / len(measured)


@dataclass
class ServiceRun:
    rates: list[float]
    latencies: list[float]
    cpu_by_role: dict[str, float]  # CPU seconds per scored note
    cores_busy: float
    batch_mean: float
    clients: int


def measure_service(root: Path, base_dir: Path, notes: list[str], batch: int, layout: Layout, repeats: int,
                    latency_requests: int) -> ServiceRun:
    from ray import serve

    from app.service import run as run_service

    # saturation: every replica has a full batch waiting behind the one it is scoring
    clients = 2 * layout.copies * batch
    port = free_port()
    settings = Settings(
        home=root / f"home-{layout.copies}x{layout.threads}", registry_dir=root / "registry",
        model={"base_model_dir": base_dir},
        serving={"port": port, "store_url": f"sqlite:///{root / f'store-{layout.copies}x{layout.threads}.sqlite'}",
                 # the ingress reserves 0.5 of Ray's CPUs; the replicas share the rest
                 "replica_cpus": max(0.25, ((os.cpu_count() or 2) - 0.5) / layout.copies),
                 "scorer_replicas": layout.copies, "torch_threads": layout.threads, "max_batch_size": batch,
                 "max_ongoing_requests": 4 * batch,
                 "auth": AuthSettings(api_keys=[ApiKey(name="bench", key_sha256=hash_api_key(KEY), roles={Role.SCORER})])})
    run_service(settings, blocking=False)
    tasks = ",".join(DEFAULT_CONTRACT.names)
    url = f"http://127.0.0.1:{port}/fhir/DocumentReference/$score?task={tasks}"
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/fhir+json"}
    try:
        with httpx.Client(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
            wait_ready(client, port)
            for i in range(2 * layout.copies):  # every replica warm
                client.post(url, content=document(i, notes[i]), headers=headers)

            def one(i: int) -> float:
                start = time.perf_counter()
                r = client.post(url, content=document(i, notes[i % len(notes)]), headers=headers)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}")
                return time.perf_counter() - start

            # closed loop: every client sends its next note as soon as its last one is answered;
            # the first `clients` answers (ramp-up) and the last `clients` (drain) are not counted
            n, total = len(notes), repeats * len(notes) + 2 * clients
            numbers, finished, lock = itertools.count(), [], threading.Lock()

            def client_loop() -> None:
                while (i := next(numbers)) < total:
                    one(i)
                    with lock:
                        finished.append(time.perf_counter())

            cpu_before, wall_before = cpu_seconds_by_role(), time.perf_counter()
            batches_before = batch_counts(client.get(f"http://127.0.0.1:{port}/metrics", headers=headers).text)
            with ThreadPoolExecutor(clients) as pool:
                for future in [pool.submit(client_loop) for _ in range(clients)]:
                    future.result()
            cpu_after, saturated_s = cpu_seconds_by_role(), time.perf_counter() - wall_before
            steady = sorted(finished)[clients:clients + repeats * n + 1]
            rates = [n / (steady[(k + 1) * n] - steady[k * n]) for k in range(repeats)]
            batches_after = batch_counts(client.get(f"http://127.0.0.1:{port}/metrics", headers=headers).text)
            latencies = [one(i) for i in range(latency_requests)]
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
    scored = total
    used = {role: cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0) for role in cpu_after}
    notes_in_batches, batches = (after - before for after, before in zip(batches_after, batches_before, strict=True))
    return ServiceRun(rates, latencies, {role: seconds / scored for role, seconds in used.items()},
                      sum(used.values()) / saturated_s, notes_in_batches / batches if batches else float("nan"), clients)


def run(base_dir: Path | None = None, n_notes: int = 48, latency_requests: int = 30, batch: int = 8, repeats: int = 3,
        min_tokens: int = 512, doc: Path | None = None) -> str:
    base_dir = Path(base_dir or get_settings().model.base_model_dir)
    notes = long_notes(n_notes, load_tokenizer(base_dir), min_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        artifact = zero_shot_artifact(base_dir, root / "artifact", DEFAULT_CONTRACT, 512, name="lang1-ops")
        in_process = {layout: measure_in_process(artifact, notes, batch, layout, repeats) for layout in LAYOUTS}
        registry = Registry(root / "registry")
        version = registry.register(artifact, "bench", "service benchmark")
        registry.promote("lang1-ops", version.version, "bench", "service benchmark")
        served = {layout: measure_service(root, base_dir, notes, batch, layout, repeats, latency_requests)
                  for layout in LAYOUTS}
    best_in_process = max(LAYOUTS, key=lambda layout: Measurement(in_process[layout][0]).median)
    best_served = max(LAYOUTS, key=lambda layout: Measurement(served[layout].rates).median)
    reference, best = Measurement(in_process[best_in_process][0]), served[best_served]
    ratio = Measurement(best.rates).median / reference.median
    rows = []
    for layout in LAYOUTS:
        rates, cpu = in_process[layout]
        m = Measurement(rates)
        rows.append(f"| in process, {layout}, batch {batch} | {m.median:.3f} | {m.spread} | {1000 * cpu:.0f} | |")
    for layout in LAYOUTS:
        r = served[layout]
        m = Measurement(r.rates)
        rows.append(f"| service, {layout} replica{'s' if layout.copies > 1 else ''} ({r.clients} clients) | "
                    f"{m.median:.3f} | {m.spread} | {1000 * sum(r.cpu_by_role.values()):.0f} | "
                    f"{100 * m.median / reference.median:.0f}%; {r.batch_mean:.1f} notes per batch |")
    roles = sorted(best.cpu_by_role.items(), key=lambda kv: -kv[1])
    cpu_rows = "\n".join(f"| {role} | {1000 * seconds:.0f} | {100 * seconds / sum(best.cpu_by_role.values()):.0f}% |"
                         for role, seconds in roles if seconds > 0.005)
    p50, p95, p99 = (float(np.percentile(best.latencies, q)) for q in (50, 95, 99))
    body = f"""## Service throughput and latency (HTTP + Ray Serve on 127.0.0.1)

Command: `{COMMAND}` ({len(notes)} notes of {min_tokens}+ tokens per pass, {repeats} passes, all five tasks
per request, SmolLM2-135M mc model in bf16 where the CPU has it; the scorer's batch is {batch} notes in process
and at most {batch} in a replica). The two cores are split either into one scorer with 2 torch threads or
into two scorers with one thread each, in process (two processes at once, their notes/s added) and as
scorer replicas behind the HTTP proxy and the ingress. The service is loaded by closed-loop clients,
two full batches per replica ({2 * batch} clients per replica: one batch scoring, one waiting); its notes/s
are counted over {repeats} windows of {len(notes)} answers after the ramp-up and before the drain.
Machine: {machine()}.

| layout | notes/s (median) | spread | CPU ms per note | service / best in process |
|---|---|---|---|---|
{chr(10).join(rows)}

**Service / in-process: {100 * ratio:.0f}%** (the best service layout, {best_served}, against the best in-process
layout, {best_in_process}); target >= 90%: {"met" if ratio >= 0.9 else "missed"}.

Where the CPU goes in the service at saturation ({best_served}; all processes of the service and the load
generator, CPU time per scored note; {best.cores_busy:.2f} of {os.cpu_count()} cores busy on average):

| process | CPU ms per note | share |
|---|---|---|
{cpu_rows}

Single-note latency at low load ({best_served}, one request at a time, {latency_requests} requests): p50
{p50:.2f} s, p95 {p95:.2f} s, p99 {p99:.2f} s on this machine.
"""
    write_section("service", body, doc)
    return body


def wait_ready(client: httpx.Client, port: int, timeout: float = 240) -> None:
    from serving.cli import wait_until_ready

    if not wait_until_ready(f"http://127.0.0.1:{port}", timeout):
        raise RuntimeError("service not ready")
