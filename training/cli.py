"""`lang1ops train | evaluate | registry ...`: typed functions whose signatures are the CLI."""

from __future__ import annotations

import getpass
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lang1ops.progress import fail, progress_bar
from lang1ops.settings import get_settings

stdout = Console()
registry_app = typer.Typer(no_args_is_help=True, help="Model versions, champion and challenger, promotions.")


class Kind(StrEnum):
    HEADS = "heads"
    MC_SFT = "mc-sft"


class SftMethod(StrEnum):
    FULL = "full"
    LORA = "lora"



def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated integers") from None


def train(
    dataset: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Dataset from `lang1ops data build`.")],
    out: Annotated[Path, typer.Option(help="Artifact directory to write (must not exist or be empty).")],
    kind: Annotated[Kind, typer.Option(help="heads: frozen base + linear heads; mc-sft: the paper's finetuning.")] = Kind.HEADS,
    method: Annotated[SftMethod, typer.Option(help="mc-sft only: full finetuning (the paper's) or LoRA.")] = SftMethod.FULL,
    base: Annotated[Path | None, typer.Option(help="Local base model directory (default: settings).")] = None,
    tasks: Annotated[str | None, typer.Option(help="Comma-separated subset of tasks (default: all).")] = None,
    max_train_notes: Annotated[int | None, typer.Option(help="Cap on training notes (random, seeded).")] = None,
    max_val_notes: Annotated[int | None, typer.Option(help="Cap on validation notes.")] = None,
    layers: Annotated[str, typer.Option(help="heads: candidate layers to pool, chosen on validation.")] = "1,2,4",
    ngrams: Annotated[bool, typer.Option(help="heads: also read the whole note's word 1-2-grams (TF-IDF) beside "
                                              "the pooled state.")] = False,
    measurements: Annotated[bool, typer.Option(help="heads with --ngrams: also read the note's measured values "
                                                    "(vitals, labs, age) in bins, kept per task where validation "
                                                    "shows a clear gain.")] = False,
    lr: Annotated[float | None, typer.Option(help="mc-sft: learning rate (default: search 1e-6..1e-3).")] = None,
    max_steps: Annotated[int, typer.Option(help="mc-sft: optimizer steps.")] = 300,
    batch_size: Annotated[int, typer.Option(help="mc-sft: examples per step, tasks mixed evenly.")] = 8,
    grad_accum: Annotated[int, typer.Option(help="mc-sft: gradient accumulation steps.")] = 1,
    eval_every: Annotated[int, typer.Option(help="mc-sft: evaluate every N steps.")] = 50,
    patience: Annotated[int, typer.Option(help="mc-sft: evaluations without improvement before stopping.")] = 3,
    time_limit_min: Annotated[float | None, typer.Option(
        help="mc-sft: stop after this many minutes with a checkpoint beside --out; the same command resumes it.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="mc-sft: Ray Train workers (1 = in this process).")] = 1,
    gpu: Annotated[bool, typer.Option(help="mc-sft: train on GPUs (bf16).")] = False,
    register: Annotated[bool, typer.Option(help="Register the artifact in the registry afterwards.")] = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train a model on a dataset and write its artifact (optionally registering it)."""
    from training.dataset import Dataset

    settings = get_settings()
    base = base or settings.model.base_model_dir
    data = Dataset.load(dataset)
    task_list = [t.strip() for t in tasks.split(",")] if tasks else None
    for t in task_list or []:
        if t not in data.contract.names:
            raise typer.BadParameter(f"unknown task {t!r}; known: {', '.join(data.contract.names)}", param_hint="--tasks")
    caps = {k: v for k, v in (("train", max_train_notes), ("val", max_val_notes)) if v}
    if kind == Kind.HEADS:
        from training.heads import EncodingCache, HeadsConfig, train_heads

        config = HeadsConfig(layers=_ints(layers), max_note_tokens=settings.model.max_note_tokens, tasks=task_list,
                             max_notes=caps, seed=seed, ngrams=ngrams or measurements,
                             measurements=measurements)
        with progress_bar() as progress:
            bar = progress.add_task("Encoding notes with the frozen base", total=None)
            path = train_heads(data, base, out, config, name=settings.model_name, cache=EncodingCache(settings.encoding_cache),
                               on_batch=lambda n: progress.advance(bar, n), on_total=lambda n: progress.update(bar, total=n))
    else:
        from training.mc_sft import SftConfig, train_mc

        config = SftConfig(method=method.value, lr=lr, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
                           eval_every=eval_every, patience=patience, max_note_tokens=settings.model.max_note_tokens,
                           tasks=task_list, max_examples=caps, seed=seed, device="cuda" if gpu else "cpu",
                           time_limit_s=time_limit_min * 60 if time_limit_min else None)
        if workers > 1 or gpu:
            from training.distributed import train_mc_distributed

            if config.lr is None:
                raise typer.BadParameter("--workers/--gpu need --lr (search it in one process first)", param_hint="--lr")
            with progress_bar() as progress:
                progress.add_task(f"mc-sft on {workers} Ray Train worker(s)", total=None)
                path = train_mc_distributed(dataset, base, out, config, workers=workers, use_gpu=gpu,
                                            name=settings.model_name)
        else:
            from training.mc_sft import checkpoint_path

            shown = {"loss": float("nan"), "auroc": float("nan")}

            def describe() -> str:
                return f"mc-sft ({method.value}) loss {shown['loss']:.3f}, val AUROC {shown['auroc']:.3f}"

            with progress_bar() as progress:
                bar = progress.add_task(describe(), total=max_steps)

                def on_step(step: int, loss: float) -> None:
                    shown["loss"] = loss
                    progress.update(bar, completed=step, description=describe())

                def on_eval(point) -> None:
                    shown["auroc"] = point.val_auroc

                path, result = train_mc(data, base, out, config, name=settings.model_name, on_step=on_step,
                                        on_eval=on_eval, on_start=lambda step: progress.update(bar, completed=step))
            if result.interrupted:
                stdout.print(f"[yellow]Stopped at step {result.steps:,} of {max_steps:,}[/] (time limit or Ctrl-C); "
                             f"checkpoint: {checkpoint_path(out)}. Run the same command again to resume.")
                raise typer.Exit(3)
    print_training_summary(path)
    if register:
        _register(path, "train")


def _auroc_text(value: float | None) -> str:
    """An AUROC for a table; none (one class in the sample, stored as null) says so."""
    return "n/a (one class)" if value is None or value != value else f"{value:.3f}"


def print_training_summary(path: Path) -> None:
    from lang1ops.artifact import ArtifactManifest

    manifest = ArtifactManifest.load(path)
    hyper = manifest.hyperparameters
    table = Table(title=f"Trained {manifest.kind.value} ({manifest.method.value}) in {manifest.wall_time_s} s: {path}")
    table.add_column("task")
    table.add_column("validation AUROC", justify="right")
    table.add_column("chosen", justify="right")
    if "heads" in hyper:
        for task, info in hyper["heads"].items():
            weight = f", pooled weight {info['dense_weight']}" if "dense_weight" in info else ""  # beside n-grams
            table.add_row(task, f"{info['val_auroc']:.3f}", f"C={info['C']}{weight}, n={info['n_train']}")
        stdout.print(table)
        stdout.print(f"pooled layer {hyper['layer']} (validation AUROC by layer: "
                     + ", ".join(f"{k}: {v:.3f}" for k, v in hyper["layer_val_auroc"].items()) + ")")
    elif hyper.get("best"):
        best = hyper["best"]
        table.columns[1].header = "validation micro-AUROC (early stopping)"
        table.add_column("one-vs-rest AUROC", justify="right")
        table.add_column("labels per class", justify="right")
        for task, value in best["per_task"].items():
            ovr, events = best.get("per_task_ovr", {}).get(task), best.get("events", {}).get(task)
            table.add_row(task, _auroc_text(value), f"step {best['step']}", "" if ovr is None else _auroc_text(ovr),
                          "" if events is None else "/".join(map(str, events)))
        stdout.print(table)
        stdout.print(f"lr {hyper['lr']:.2e}, {hyper['steps']} steps" + (", stopped early" if hyper["stopped_early"] else ""))
        thin = [task for task, events in best.get("events", {}).items() if min(events) < 10]
        if thin:
            stdout.print(f"[yellow]Validation has under 10 notes of some class for {', '.join(thin)}[/]: its AUROC "
                         "steers early stopping by noise; give --max-val-notes more (or none) for a real run.")


def evaluate(
    model: Annotated[str, typer.Option(help="Artifact directory, or a registry reference such as champion or v0003.")],
    dataset: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Dataset from `lang1ops data build`.")],
    splits: Annotated[str, typer.Option(help="Comma-separated splits; the last one gets the plots.")] = "val,test",
    baselines: Annotated[str, typer.Option(help="Comma-separated: tfidf, zero-shot, or none.")] = "tfidf,zero-shot",
    max_notes: Annotated[int | None, typer.Option(help="Cap on notes per split (random, seeded).")] = None,
    out: Annotated[Path | None, typer.Option(help="Report directory (default: the artifact's own).")] = None,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% CIs.")] = 1000,
    candidates: Annotated[str, typer.Option(help="Comma-separated other models (registry references or artifact "
                                                 "directories) scored on the same notes, a column each.")] = "",
) -> None:
    """AUROC with 95% bootstrap CI, ECE, subgroups, plots and a model card, beside the baselines."""
    from lang1ops.artifact import ArtifactManifest
    from training.dataset import Dataset
    from training.report import evaluate_model

    settings = get_settings()
    path = _artifact_of(model)
    if not Path(model, "artifact.json").exists():
        out = out or Path(settings.home) / "reports" / f"{settings.model_name}-{path.name}"
    others = {}
    for ref in (r.strip() for r in candidates.split(",") if r.strip()):
        other = _artifact_of(ref)
        others[f"{ref} ({ArtifactManifest.load(other).kind.value}, candidate)"] = other
    data = Dataset.load(dataset)
    wanted = [s.strip() for s in splits.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in data.splits]
    if unknown:
        raise typer.BadParameter(f"unknown split(s) {unknown}; known: {', '.join(data.splits)}", param_hint="--splits")
    chosen = tuple(b.strip() for b in baselines.split(",") if b.strip() and b.strip() != "none")
    with progress_bar() as progress:
        bar = progress.add_task("Scoring notes", total=None)
        evaluate_model(path, data, wanted, out_dir=out, baselines=chosen, max_notes=max_notes, n_resamples=resamples,
                       base_fallback=settings.model.base_model_dir, on_total=lambda n: progress.update(bar, total=n),
                       on_batch=lambda n: progress.advance(bar, n), candidates=others)
    report_dir = out or path
    stdout.print((report_dir / "model_card.md").read_text())
    stdout.print(f"Report: {report_dir / 'model_card.md'}, {report_dir / 'metrics.json'}, plots in {report_dir / 'plots'}")


def _artifact_of(reference: str) -> Path:
    """An artifact directory as given, or the registry's version for a reference (champion, v0003)."""
    path = Path(reference)
    if (path / "artifact.json").exists():
        return path
    from lang1ops.registry import Registry

    settings = get_settings()
    try:
        return Registry(settings.registry_dir).get(settings.model_name, reference).path
    except KeyError as error:
        raise fail(str(error).strip("'\"")) from None


def _register(path: Path, reason: str) -> None:
    from lang1ops.registry import Registry

    settings = get_settings()
    version = Registry(settings.registry_dir).register(path, actor=getpass.getuser(), reason=reason)
    stdout.print(f"registered {version.name} {version.version} (sha256 {version.content_hash[:12]}...) in "
                 f"{settings.registry_dir}")


@registry_app.command("list")
def registry_list() -> None:
    """Versions of the model line with their aliases."""
    from lang1ops.registry import Registry

    settings = get_settings()
    registry = Registry(settings.registry_dir)
    aliases = registry.aliases(settings.model_name)
    table = Table(title=f"{settings.model_name} in {settings.registry_dir}")
    for column in ("version", "aliases", "kind", "method", "created", "trained on"):
        table.add_column(column)
    for v in registry.versions(settings.model_name):
        marks = ", ".join(a for a, ver in aliases.items() if ver == v.version)
        windows = v.manifest.get("data", {}).get("windows") or []
        trained = next((f"{w['start']}..{w['end']}" for w in windows if w.get("name") == "train"), "")
        table.add_row(v.version, marks, v.manifest.get("kind", ""), v.manifest.get("method", ""),
                      str(v.manifest.get("created", ""))[:19], trained)
    stdout.print(table)


@registry_app.command("show")
def registry_show(ref: Annotated[str, typer.Argument(help="Version (v0003) or alias (champion).")] = "champion") -> None:
    """A version's manifest, content hash check and recent audit records."""
    from lang1ops.registry import Registry

    settings = get_settings()
    registry = Registry(settings.registry_dir)
    try:
        version = registry.get(settings.model_name, ref)
    except KeyError as error:
        raise fail(str(error).strip("'\"")) from None
    stdout.print(f"{version.name} {version.version} at {version.path}")
    stdout.print(f"content sha256 {version.content_hash} ({'verified' if registry.verify(version.name, version.version) else 'MODIFIED'})")
    stdout.print_json(json.dumps(version.manifest, default=str))
    for record in registry.audit(settings.model_name)[-10:]:
        if record.get("version") == version.version:
            stdout.print(f"{record['time']} {record['action']} by {record['actor']}: {record['reason']}")


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="Version to make champion, e.g. v0004.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")],
    actor: Annotated[str | None, typer.Option(help="Who (default: the OS user).")] = None,
) -> None:
    """Make a version the champion (serving reloads it); audited. The retraining loop gates
    its promotions; a manual promotion is an operator's decision, recorded as such."""
    from lang1ops.registry import Registry

    settings = get_settings()
    registry = Registry(settings.registry_dir)
    try:
        previous = registry.promote(settings.model_name, version, actor=actor or getpass.getuser(), reason=reason,
                                    details={"manual": True})
    except (KeyError, ValueError) as error:
        raise fail(str(error).strip("'\"")) from None
    stdout.print(f"champion: {version} (was {previous or 'none'})")
