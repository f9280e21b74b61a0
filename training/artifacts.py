"""Writing model artifacts (the format is lang1ops.artifact's)."""

from __future__ import annotations

import shutil
from pathlib import Path

from lang1ops.artifact import (
    CONTRACT,
    ArtifactManifest,
    Method,
    ModelKind,
    Pooling,
    base_reference,
    code_revision,
)
from lang1ops.base_model import load_tokenizer
from lang1ops.tasks import TaskContract


def start_artifact(out_dir: Path, *, name: str, kind: ModelKind, method: Method, base_dir: Path, contract: TaskContract,
                   max_note_tokens: int, pooling: Pooling | None = None, data: dict | None = None,
                   hyperparameters: dict | None = None, lineage: dict | None = None) -> ArtifactManifest:
    """Create the directory with its manifest, contract and tokenizer; weights come next."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; artifacts are written once")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = ArtifactManifest(
        name=name, kind=kind, method=method, base=base_reference(base_dir), max_note_tokens=max_note_tokens,
        pooling=pooling, data=data or {}, hyperparameters=hyperparameters or {},
        lineage={"code_revision": code_revision(), **(lineage or {})},
    )
    manifest.save(out_dir)
    contract.save(out_dir / CONTRACT)
    load_tokenizer(base_dir).save_pretrained(str(out_dir / "tokenizer"))
    return manifest


def zero_shot_artifact(base_dir: Path, out_dir: Path, contract: TaskContract, max_note_tokens: int,
                       name: str = "zero-shot") -> Path:
    """The base model asked the paper's questions with no training: a baseline and a fallback."""
    start_artifact(out_dir, name=name, kind=ModelKind.MC, method=Method.ZERO_SHOT, base_dir=base_dir, contract=contract,
                   max_note_tokens=max_note_tokens)
    return Path(out_dir)


def remove_partial(out_dir: Path) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
