"""Where the API's scores come from: the registry model loaded in this process (`LocalBackend`,
for tests and single-process use), or Ray Serve scorer replicas (`RayBackend`)."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lang1ops.scorer import LoadedModel, MultitaskScorer, load_model
from lang1ops.tasks import TaskContract
from serving import instruments as prom
from serving.service import ModelInfo, ScoreReply


@dataclass(frozen=True)
class ResolvedModel:
    version: str
    path: Path
    content_hash: str | None = None  # the registry's record; checked against the files before loading


class ModelIntegrityError(RuntimeError):
    """The artifact's files no longer hash to what the registry recorded: never served."""


def resolve_model(ref: str, registry_dir: Path, name: str) -> ResolvedModel:
    """A registry alias/version of `name`, or a path to an artifact directory (not in a registry:
    nothing to check its files against)."""
    candidate = Path(ref)
    if (candidate / "artifact.json").exists():
        return ResolvedModel(candidate.name, candidate)
    from lang1ops.registry import Registry

    version = Registry(registry_dir).get(name, ref)
    return ResolvedModel(version.version, version.path, version.content_hash)


def verify_integrity(resolved: ResolvedModel) -> None:
    """Refuse an artifact whose files changed since registration (a tampered or half-copied
    model must not answer for patients)."""
    if resolved.content_hash is None:
        return
    from lang1ops.registry import content_hash

    try:
        actual = content_hash(resolved.path)
    except (OSError, ValueError) as exc:
        raise ModelIntegrityError(f"model {resolved.version}: files unreadable ({type(exc).__name__})") from None
    if actual != resolved.content_hash:
        raise ModelIntegrityError(f"model {resolved.version}: files do not match the registry's content hash; "
                                  "refusing to load it")


class ActiveModel:
    """The model a replica scores with, swapped atomically: a batch takes one snapshot and
    every note in it is answered by that one version."""

    def __init__(self):
        self._current: tuple[LoadedModel, MultitaskScorer] | None = None
        self._lock = threading.Lock()

    def load(self, resolved: ResolvedModel, base_fallback: Path | None, device: str, dtype: str, max_batch: int,
             backend: str = "hf") -> None:
        verify_integrity(resolved)  # before any byte of it is loaded; the current model keeps serving
        if engine_for(resolved.path, backend) == "vllm":
            loaded, scorer = load_vllm(resolved, base_fallback)
        else:
            loaded = load_model(resolved.path, base_fallback, device=device, dtype=dtype, version=resolved.version)
            scorer = MultitaskScorer(loaded, max_batch_notes=max_batch)
        with self._lock:
            self._current = (loaded, scorer)  # the old model keeps serving batches already running

    def snapshot(self) -> tuple[LoadedModel, MultitaskScorer]:
        with self._lock:
            if self._current is None:
                raise RuntimeError("no model loaded yet")
            return self._current

    @property
    def version(self) -> str | None:
        return self._current[0].version if self._current else None


def engine_for(artifact_dir: Path, backend: str) -> str:
    """Which engine serves this artifact on this profile: vLLM for option-letter (mc) models, full
    or LoRA, on the GPU profile; the PyTorch scorer (on the profile's device, CUDA there) for
    everything vLLM cannot run, such as heads on the base model's hidden states. Every artifact
    kind the registry can promote is servable on every profile."""
    if backend != "vllm":
        return "hf"
    from lang1ops.artifact import ArtifactManifest, ModelKind

    return "vllm" if ArtifactManifest.load(artifact_dir).kind == ModelKind.MC else "hf"


def load_vllm(resolved: ResolvedModel, base_fallback: Path | None):
    """A vLLM engine for an mc artifact (GPU image); metadata as for the PyTorch path."""
    from lang1ops.artifact import ArtifactManifest, Method, load_artifact_contract, resolve_base
    from lang1ops.base_model import load_tokenizer
    from lang1ops.prompts import PromptEncoder
    from serving.vllm_backend import VllmScorer

    manifest = ArtifactManifest.load(resolved.path)
    # full: the finetuned weights; LoRA: the base plus the adapter (vLLM applies it per request);
    # zero-shot: the base itself
    model_dir = resolved.path / "weights" if manifest.method == Method.FULL else resolve_base(manifest.base, base_fallback)
    contract = load_artifact_contract(resolved.path)
    loaded = LoadedModel(manifest.kind, contract, None, PromptEncoder(load_tokenizer(resolved.path / "tokenizer"), contract,
                                                                       manifest.max_note_tokens),
                         manifest=manifest, version=resolved.version)
    return loaded, VllmScorer(model_dir, resolved.path)


def score_batch(model: LoadedModel, scorer: MultitaskScorer, texts: list[str], tasks: list[list[str]]) -> list[dict]:
    name = model.manifest.name if model.manifest else "model"
    return [{"probabilities": {t: [float(x) for x in p] for t, p in n.probabilities.items()}, "model_name": name,
             "model_version": model.version, "model_kind": str(model.kind), "note_tokens": n.note_tokens,
             "truncated": n.truncated, "encoding": np.asarray(n.pooled, dtype=np.float32).tobytes()}
            for n in scorer.score_notes(texts, tasks)]


def info_of(model: LoadedModel) -> dict:
    return {"name": model.manifest.name if model.manifest else "model", "version": model.version,
            "kind": str(model.kind), "contract": model.contract.model_dump(mode="json")}


class LocalBackend:
    """The scorer in this process (one request at a time through a worker thread)."""

    def __init__(self, resolved: ResolvedModel, base_fallback: Path | None = None, device: str = "cpu",
                 dtype: str = "auto"):
        self.active = ActiveModel()
        self.active.load(resolved, base_fallback, device, dtype, max_batch=8)
        self._lock = asyncio.Lock()

    async def score(self, text: str, tasks: list[str]) -> ScoreReply:
        model, scorer = self.active.snapshot()
        async with self._lock:
            started = time.perf_counter()
            reply = (await asyncio.to_thread(score_batch, model, scorer, [text], [tasks]))[0]
            prom.observe_batch("scorer", model.contract, [tasks], [reply], time.perf_counter() - started)
        return ScoreReply(**reply)

    async def model_info(self) -> ModelInfo:
        model, _ = self.active.snapshot()
        info = info_of(model)
        return ModelInfo(info["name"], info["version"], info["kind"], model.contract)

    async def contract_for(self, version: str) -> TaskContract:
        model, _ = self.active.snapshot()
        if model.version != version:
            raise LookupError(f"version {version} is not loaded")
        return model.contract


class RayBackend:
    """Calls the scorer deployment. Contracts are cached by version: a replica adds its
    contract to a reply when the caller has not seen that version yet."""

    def __init__(self, handle, info_ttl_s: float = 1.0):
        self.handle, self.info_ttl_s = handle, info_ttl_s
        self._contracts: dict[str, TaskContract] = {}
        self._info: tuple[float, ModelInfo] | None = None  # (when asked, answer)

    def _remember(self, version: str, contract: dict | None) -> None:
        if contract is not None and version not in self._contracts:
            self._contracts[version] = TaskContract.model_validate(contract)

    async def score(self, text: str, tasks: list[str]) -> ScoreReply:
        reply = await self.handle.score.remote(text, tasks, list(self._contracts))
        self._remember(reply["model_version"], reply.pop("contract", None))
        cached = self._info
        if cached is not None and cached[1].version != reply["model_version"]:
            self._info = None  # another version answered: the next model_info asks again
        return ScoreReply(**reply)

    async def model_info(self) -> ModelInfo:
        """What the scorer serves. Every note needs it (to choose its tasks) and each ask is a call
        into a busy scorer replica, so it is asked at most once per `info_ttl_s` and again as soon
        as a reply names another version; the answer itself always carries the contract of the
        version that made it (`contract_for`)."""
        cached = self._info
        if cached is not None and time.monotonic() - cached[0] < self.info_ttl_s:
            return cached[1]
        asked = time.monotonic()
        info = await self.handle.model_info.remote()
        self._remember(info["version"], info["contract"])
        answer = ModelInfo(info["name"], info["version"], info["kind"], self._contracts[info["version"]])
        self._info = (asked, answer)
        return answer

    async def contract_for(self, version: str) -> TaskContract:
        return self._contracts[version]
