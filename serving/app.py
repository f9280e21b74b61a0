"""The Ray Serve application: a FastAPI ingress deployment and scorer replicas.

```
HTTP ──> Ingress (FastAPI: FHIR + JSON API, auth, store, audit)
            └── handle ──> Scorer replicas (DynamicBatcher; one model version per batch)
```
The scorer's `user_config` names the model version; changing it (`serve.run` with the new
config, done by `watch_registry` when the registry's champion changes) calls `reconfigure`
on the running replicas, which load the new version beside the old one and swap it in
between batches: no request is dropped and every answer names the one version that made it.

The other areas' endpoints (CDS Hooks, Subscriptions, alerts, views) come from the
`extensions` factory the caller passes (`app.service`, the top floor, assembles the whole
service; serving never imports the areas above it). The factory is bound into the ingress
deployment and called inside its replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import APIRouter
from ray import serve

from lang1ops.settings import Settings
from serving import instruments as prom
from serving.backends import ActiveModel, RayBackend, info_of, resolve_model, score_batch
from serving.batching import DynamicBatcher

log = logging.getLogger("lang1ops.serve")

Extensions = Callable[[Settings], list[APIRouter]]  # settings -> the other areas' routers


@serve.deployment(name="scorer")
class Scorer:
    def __init__(self, settings_json: str):
        self.settings = Settings.model_validate_json(settings_json)
        s = self.settings.serving
        import torch

        # torch uses as many threads as the replica has CPUs, not the machine's. The setting is
        # per calling thread for OpenMP and oneDNN (a new thread starts with one per core), so the
        # model runs on one thread of its own that is set once: without it two 1-thread replicas
        # ran their matrix multiplies on 2 threads each, 4 threads on 2 cores.
        threads = s.torch_threads or max(1, int(s.replica_cpus))
        torch.set_num_threads(threads)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="scorer-model", initializer=torch.set_num_threads,
                                               initargs=(threads,))
        self.active = ActiveModel()
        self.loaded_ref: str | None = None
        self.deployment = serve.get_replica_context().deployment  # "scorer" or "shadow": a metrics label
        self.served: tuple[str, str, str] | None = None  # (name, version, kind) as last reported to metrics
        self.batcher = DynamicBatcher(self._score_batch, s.max_batch_size, s.batch_wait_timeout_s)

    async def reconfigure(self, user_config: dict) -> None:
        ref = user_config.get("model_ref") or self.settings.serving.model_ref
        try:
            resolved = resolve_model(ref, self.settings.registry_dir, self.settings.model_name)
        except KeyError:
            if user_config.get("optional"):  # the shadow replica waits for a challenger to exist
                log.info("no %s to serve yet", ref)
                return
            raise
        if resolved.version == self.active.version and self.loaded_ref is not None:
            return
        s = self.settings.serving
        # loading takes seconds: done in a thread so batches keep running on the old model
        await asyncio.to_thread(self.active.load, resolved, self.settings.model.base_model_dir, s.device, s.dtype,
                                s.max_batch_size, s.backend)
        self.loaded_ref = ref
        model, _ = self.active.snapshot()
        info = info_of(model)
        prom.set_serving_model(self.deployment, info["name"], info["version"], info["kind"], self.served)
        self.served = (info["name"], info["version"], info["kind"])
        log.info("scorer replica now serves %s %s", self.settings.model_name, resolved.version)

    async def score(self, text: str, tasks: list[str], known_versions: list[str]) -> dict:
        return await self.batcher.submit((text, tasks, known_versions))

    async def _score_batch(self, requests: list[tuple[str, list[str], list[str]]]) -> list[dict]:
        texts, tasks, known_versions = (list(column) for column in zip(*requests, strict=True))
        model, scorer = self.active.snapshot()  # one version for the whole batch
        started = time.perf_counter()
        try:
            replies = await asyncio.get_running_loop().run_in_executor(self.model_thread, score_batch, model, scorer,
                                                                       texts, tasks)
        except Exception as exc:
            prom.observe_scorer_error(self.deployment, exc)
            raise
        prom.observe_batch(self.deployment, model.contract, tasks, replies, time.perf_counter() - started)
        for reply, known in zip(replies, known_versions, strict=True):
            if model.version not in known:
                reply["contract"] = model.contract.model_dump(mode="json")
        return replies

    async def model_info(self) -> dict:
        model, _ = self.active.snapshot()
        return info_of(model)


def build_ingress_app(settings: Settings, handle, shadow_handle=None, extensions: Extensions | None = None):
    from serving.api import create_api
    from serving.auth import Authenticator
    from serving.store import Store

    Path(settings.home).mkdir(parents=True, exist_ok=True)
    return create_api(RayBackend(handle), Store(settings.serving.store_url), Authenticator(settings.serving.auth),
                      settings.serving.api, shadow=RayBackend(shadow_handle) if shadow_handle else None,
                      routers=extensions(settings) if extensions else [])


@serve.deployment(name="ingress")
@serve.ingress()
class Ingress:
    """The FastAPI app (serving.api) as a deployment; scoring happens in the scorer replicas."""

    def __init__(self, scorer_handle, settings_json: str, shadow_handle=None, extensions: Extensions | None = None):
        self.settings = Settings.model_validate_json(settings_json)
        self.scorer_handle, self.shadow_handle, self.extensions = scorer_handle, shadow_handle, extensions

    def __serve_build_asgi_app__(self):
        # built inside the replica, after __init__: create_api stays plain FastAPI, free of Ray
        return build_ingress_app(self.settings, self.scorer_handle, self.shadow_handle, self.extensions)


def build_app(settings: Settings, model_ref: str | None = None, shadow_ref: str | None = None,
              extensions: Extensions | None = None):
    """The Serve application. `model_ref` and `shadow_ref` name the versions the scorer and the
    shadow replicas load (default: the settings'); they are in the deployments' user_config, so
    changing one reconfigures every replica of that deployment to the same version."""
    s = settings.serving
    settings_json = settings.model_dump_json()
    # every actor records metrics into one shared directory, merged by the ingress's /metrics;
    # set through runtime_env so it is in place before prometheus_client is imported there
    metrics_env = {"env_vars": prom.service_metrics_env(settings.home)}
    scorer_options = {"max_ongoing_requests": max(s.max_ongoing_requests, s.max_batch_size),
                      "ray_actor_options": {"num_cpus": s.replica_cpus, **({"num_gpus": 1} if s.device == "cuda" else {}),
                                            "runtime_env": metrics_env},
                      "user_config": {"model_ref": model_ref or s.model_ref}}
    if s.autoscaling:
        scorer_options["autoscaling_config"] = s.autoscaling.model_dump()
    else:
        scorer_options["num_replicas"] = s.scorer_replicas
    scorer = Scorer.options(**scorer_options).bind(settings_json)
    shadow = None
    if s.shadow:  # the challenger on its own small replica; it waits if there is no challenger yet
        shadow = Scorer.options(name="shadow", num_replicas=1, max_ongoing_requests=scorer_options["max_ongoing_requests"],
                                ray_actor_options={"num_cpus": min(0.5, s.replica_cpus), "runtime_env": metrics_env},
                                user_config={"model_ref": shadow_ref or s.shadow_ref, "optional": True}
                                ).bind(settings_json)
    return Ingress.options(num_replicas=1, max_ongoing_requests=max(64, 4 * s.max_ongoing_requests),
                           ray_actor_options={"num_cpus": 0.5, "runtime_env": metrics_env}).bind(scorer, settings_json, shadow,
                                                                                                 extensions)


def resolved_champion(settings: Settings) -> str:
    return resolve_model(settings.serving.model_ref, settings.registry_dir, settings.model_name).version


def resolved_versions(settings: Settings) -> tuple[str, str | None]:
    """(scorer version, shadow version or None): what the deployments should load right now."""
    champion = resolved_champion(settings)
    if not settings.serving.shadow:
        return champion, None
    try:
        return champion, resolve_model(settings.serving.shadow_ref, settings.registry_dir, settings.model_name).version
    except KeyError:  # no challenger yet: the shadow replica waits
        return champion, None


def run(settings: Settings, blocking: bool = True, on_start=None, stop: asyncio.Event | None = None,
        extensions: Extensions | None = None) -> None:
    """Start local Ray and Serve, deploy, then follow the registry's champion (and challenger)
    until stopped."""
    from lang1ops.ray_local import ensure_ray

    ensure_ray()
    prom.service_metrics_env(settings.home, clear=True)  # a fresh start: no counts from an earlier run
    serve.start(http_options={"host": settings.serving.host, "port": settings.serving.port})
    versions = resolved_versions(settings)
    serve.run(build_app(settings, *versions, extensions=extensions), name="lang1ops", route_prefix="/")
    if on_start:
        on_start(versions[0])
    if blocking:
        watch_registry(settings, versions, extensions=extensions)


def watch_registry(settings: Settings, versions: tuple[str, str | None], should_stop=lambda: False,
                   extensions: Extensions | None = None) -> None:
    """Redeploy with the new versions whenever the registry's champion (or, with shadow scoring,
    its challenger) changes: a lightweight Serve update, every replica of a deployment
    reconfigured to the one pinned version. `versions` is what is deployed now
    (`resolved_versions`)."""
    while not should_stop():
        time.sleep(settings.serving.watch_interval_s)
        try:
            current = resolved_versions(settings)
        except (KeyError, OSError) as exc:
            log.warning("registry not readable: %s", type(exc).__name__)
            continue
        if current != versions:
            log.info("registry changed %s -> %s: reconfiguring replicas", versions, current)
            serve.run(build_app(settings, *current, extensions=extensions), name="lang1ops", route_prefix="/",
                      blocking=False)
            versions = current


def serve_config(settings: Settings, import_path: str) -> dict:
    """A Ray Serve config file (`serve deploy`, KubeRay RayService `serveConfigV2`) generated
    from the same settings the service reads, so a cluster runs what `lang1ops serve` runs."""
    s = settings.serving
    metrics_env = {"env_vars": {prom.MULTIPROC_ENV: str(Path(settings.home).resolve() / "prometheus-multiproc")}}
    scorer: dict = {"name": "scorer", "max_ongoing_requests": max(s.max_ongoing_requests, s.max_batch_size),
                    "ray_actor_options": {"num_cpus": s.replica_cpus, **({"num_gpus": 1} if s.device == "cuda" else {}),
                                          "runtime_env": metrics_env},
                    "user_config": {"model_ref": s.model_ref}}
    if s.autoscaling:
        scorer["autoscaling_config"] = s.autoscaling.model_dump()
    else:
        scorer["num_replicas"] = s.scorer_replicas
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": s.host, "port": s.port},
        "applications": [{
            "name": "lang1ops", "route_prefix": "/", "import_path": import_path,
            "args": settings.model_dump(mode="json"),
            "deployments": [scorer, {"name": "ingress", "num_replicas": 1,
                                     "ray_actor_options": {"num_cpus": 0.5, "runtime_env": metrics_env}}],
        }],
    }
