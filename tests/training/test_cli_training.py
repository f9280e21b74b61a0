"""`lang1ops train | evaluate | registry` end to end on the tiny model and a small hospital."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from app.cli import app

runner = CliRunner()


def test_train_heads_register_evaluate_promote(settings_env, small_dataset):
    artifact = settings_env / "heads"
    result = runner.invoke(app, ["train", "--dataset", str(small_dataset), "--out", str(artifact), "--layers", "1,2",
                                 "--max-train-notes", "300", "--max-val-notes", "80", "--register"])
    assert result.exit_code == 0, result.output
    assert "validation AUROC" in result.output and "registered lang1-ops v0001" in result.output

    result = runner.invoke(app, ["evaluate", "--model", "v0001", "--dataset", str(small_dataset),
                                 "--splits", "test,temporal_2024", "--max-notes", "60", "--resamples", "50"])
    assert result.exit_code == 0, result.output
    report = settings_env / "home" / "reports" / "lang1-ops-v0001"
    metrics = json.loads((report / "metrics.json").read_text())
    models = {r["model"] for r in metrics["rows"]}
    assert models == {"heads (this model)", "TF-IDF baseline", "zero-shot"}
    assert {r["split"] for r in metrics["rows"]} == {"test", "temporal_2024"}
    for row in metrics["rows"]:
        a = row["auroc"]
        if a["estimate"] is not None and a["low"] is not None:
            assert a["low"] <= a["estimate"] <= a["high"]
    assert (report / "plots" / "roc_los_temporal_2024.png").stat().st_size > 1000
    card = (report / "model_card.md").read_text()
    assert "TF-IDF baseline" in card and "zero-shot" in card and "readmission" in card

    # a second candidate: its card shows the first beside it, scored on the same notes
    result = runner.invoke(app, ["train", "--dataset", str(small_dataset), "--out", str(settings_env / "heads-1"),
                                 "--layers", "1", "--max-train-notes", "300", "--max-val-notes", "80", "--register"])
    assert result.exit_code == 0 and "registered lang1-ops v0002" in result.output, result.output
    result = runner.invoke(app, ["evaluate", "--model", "v0002", "--dataset", str(small_dataset), "--splits",
                                 "temporal_2024", "--max-notes", "60", "--resamples", "50", "--baselines", "tfidf",
                                 "--candidates", "v0001"])
    assert result.exit_code == 0, result.output
    rows = json.loads((settings_env / "home" / "reports" / "lang1-ops-v0002" / "metrics.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"heads (this model)", "v0001 (heads, candidate)", "TF-IDF baseline"}
    by_model = {m: {r["task"]: r for r in rows if r["model"] == m} for m in {r["model"] for r in rows}}
    for task, row in by_model["heads (this model)"].items():  # the same notes: the same events
        assert by_model["v0001 (heads, candidate)"][task]["class_counts"] == row["class_counts"]
    first = {r["task"]: r["auroc"]["estimate"] for r in metrics["rows"]
             if r["model"] == "heads (this model)" and r["split"] == "temporal_2024"}
    assert {t: r["auroc"]["estimate"] for t, r in by_model["v0001 (heads, candidate)"].items()} == first
    assert "v0001 (heads, candidate) AUROC" in (settings_env / "home" / "reports" / "lang1-ops-v0002" / "model_card.md").read_text()
    result = runner.invoke(app, ["evaluate", "--model", "v0002", "--dataset", str(small_dataset), "--candidates", "v0042"])
    assert result.exit_code == 2 and "has no version 'v0042'" in result.output

    result = runner.invoke(app, ["registry", "promote", "v0001", "--reason", "first model", "--actor", "tester"])
    assert result.exit_code == 0 and "champion: v0001" in result.output
    result = runner.invoke(app, ["registry", "list"])
    assert "champion" in result.output and "heads" in result.output
    result = runner.invoke(app, ["registry", "show", "champion"])
    assert "verified" in result.output and "promote by tester: first model" in result.output


def test_bad_references_and_tasks_are_clear_errors(settings_env, small_dataset):
    result = runner.invoke(app, ["evaluate", "--model", "v0042", "--dataset", str(small_dataset)])
    assert result.exit_code == 2 and "no model named" in result.output
    result = runner.invoke(app, ["train", "--dataset", str(small_dataset), "--out", str(settings_env / "x"),
                                 "--tasks", "sepsis"])
    assert result.exit_code == 2 and "unknown task" in result.output


def test_training_summaries_show_what_was_chosen_and_warn_on_thin_validation(settings_env, small_dataset):
    """mc-sft on a validation sample with under 10 notes of a class says its early stopping was
    steered by noise (and a task whose sample holds one class has no AUROC: it printed a crash
    before); heads with n-grams show each task's pooled-block weight beside C."""
    result = runner.invoke(app, ["train", "--dataset", str(small_dataset), "--out", str(settings_env / "mc"),
                                 "--kind", "mc-sft", "--tasks", "mortality", "--lr", "1e-3", "--max-steps", "2",
                                 "--eval-every", "2", "--batch-size", "4", "--max-train-notes", "12",
                                 "--max-val-notes", "12"])
    assert result.exit_code == 0, result.output
    # 12 validation notes without a death: no AUROC (said, not a crash), the class counts, the warning
    assert "n/a (one class)" in result.output and "12/0" in result.output
    assert "Validation has under 10 notes of some class for mortality" in result.output

    result = runner.invoke(app, ["train", "--dataset", str(small_dataset), "--out", str(settings_env / "hybrid"),
                                 "--layers", "1", "--ngrams", "--max-train-notes", "200", "--max-val-notes", "80"])
    assert result.exit_code == 0, result.output
    assert "pooled weight" in result.output and "Validation has under" not in result.output
