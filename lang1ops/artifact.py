"""The model artifact: one directory that says everything serving needs to score with it.

```
artifact.json        ArtifactManifest: kind, method, base reference, data window, lineage, ...
contract.json        the task contract the model answers (serving reads tasks from here)
tokenizer/           the tokenizer the model was trained with
weights/             kind "mc", method "full": the finetuned causal LM (safetensors)
adapter/             kind "mc", method "lora": the peft adapter; the base is referenced
heads.safetensors    kind "heads": per-task linear heads on pooled encodings of the frozen base
metrics.json, model_card.md, model_card.json, plots/   evaluation (written by training)
```
Two kinds: **mc** answers the paper's multiple-choice prompt (class probabilities are the
softmax over the option letters' logits) and covers zero-shot (the base itself), full
finetuning and LoRA; **heads** encodes the note once with the frozen base and applies a
linear classifier per task. Bases are referenced, not copied: a path plus the sha256 of the
weights, checked when the artifact is loaded, so a moved or swapped base is caught.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

from lang1ops.calibration import TaskCalibration
from lang1ops.tasks import TaskContract

MANIFEST = "artifact.json"
CONTRACT = "contract.json"
FORMAT_VERSION = 1


class ModelKind(StrEnum):
    MC = "mc"
    HEADS = "heads"


class Method(StrEnum):
    ZERO_SHOT = "zero-shot"
    FULL = "full"
    LORA = "lora"
    LOGREG = "logreg"


class BaseReference(BaseModel):
    path: str = Field(description="Directory of the base model when the artifact was made.")
    weights_sha256: str = Field(description="sha256 of the base's weight files, checked on load.")
    name: str = ""


class Pooling(BaseModel):
    """How a heads model turns a note into one vector."""

    layer: int = Field(description="Decoder layer whose output is pooled (1-based); the forward stops there.")
    method: str = "mean"  # mean over the note's tokens


class ArtifactManifest(BaseModel):
    format_version: int = FORMAT_VERSION
    name: str = Field(description="Registry name of the model line, e.g. 'lang1-ops'.")
    kind: ModelKind
    method: Method
    base: BaseReference
    max_note_tokens: int
    pooling: Pooling | None = None
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))
    data: dict = Field(default_factory=dict, description="Dataset, windows, split sizes the model was trained on.")
    hyperparameters: dict = Field(default_factory=dict)
    lineage: dict = Field(default_factory=dict, description="Parent version, code revision, trigger.")
    wall_time_s: float | None = None
    calibration: dict[str, TaskCalibration] = Field(
        default_factory=dict, description="Per-task maps the scorer applies to the softmax (fitted on validation); "
        "a task without one is served uncalibrated.")

    def save(self, directory: Path) -> None:
        (Path(directory) / MANIFEST).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ArtifactManifest:
        return cls.model_validate_json((Path(directory) / MANIFEST).read_text())


def weights_sha256(model_dir: Path) -> str:
    """sha256 over a model directory's weight files (names and bytes, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        raise FileNotFoundError(f"no weight files in {model_dir}")
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def base_reference(model_dir: Path, name: str = "") -> BaseReference:
    model_dir = Path(model_dir).resolve()
    return BaseReference(path=str(model_dir), weights_sha256=weights_sha256(model_dir), name=name or model_dir.name)


class BaseMismatch(RuntimeError):
    pass


def resolve_base(ref: BaseReference, fallback: Path | None = None) -> Path:
    """The base directory whose weights match the reference: the recorded path, else
    `fallback` (the configured base, e.g. on a cluster where paths differ)."""
    tried = []
    for candidate in (Path(ref.path), fallback):
        if candidate is None or not (candidate / "config.json").exists():
            continue
        tried.append(str(candidate))
        if weights_sha256(candidate) == ref.weights_sha256:
            return candidate
    raise BaseMismatch(f"base model {ref.name!r} with weights sha256 {ref.weights_sha256[:12]}... not found "
                       f"(looked in: {', '.join(tried) or ref.path})")


def code_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load_artifact_contract(directory: Path) -> TaskContract:
    return TaskContract.load(Path(directory) / CONTRACT)


def write_json(path: Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
