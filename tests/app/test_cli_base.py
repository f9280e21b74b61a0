"""`lang1ops base ...` through typer's test runner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from lang1ops import base_model
from lang1ops.tasks import DEFAULT_CONTRACT

runner = CliRunner()


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "base" in result.output


def test_check_prints_size_and_every_option_probability(tiny_llama_dir: Path) -> None:
    result = runner.invoke(app, ["base", "check", str(tiny_llama_dir), "--task", "cci"])
    assert result.exit_code == 0, result.output
    assert "non embedding parameters" in result.stdout
    rows = re.findall(r"│ ([A-E]) +│ .+│ +\d+ │ +(0\.\d{4}|1\.0000) │", result.stdout)
    assert [letter for letter, _ in rows] == DEFAULT_CONTRACT.task("cci").letters
    assert sum(float(p) for _, p in rows) == pytest.approx(1.0, abs=5e-4)  # four printed decimals each


def test_check_reads_a_note_file_and_reports_truncation(tiny_llama_dir: Path, tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("Patient admitted with pneumonia and acute kidney injury. " * 20)
    result = runner.invoke(
        app, ["base", "check", str(tiny_llama_dir), "--note-file", str(note), "--max-note-tokens", "8"]
    )
    assert result.exit_code == 0, result.output
    assert "8 tokens, truncated from" in result.stdout
    assert "│ A " in result.stdout and "│ B " in result.stdout


def test_check_bad_path_exits_2_with_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["base", "check", str(tmp_path / "absent")])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error:") and "not a local model directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_check_dir_without_model_exits_2(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    result = runner.invoke(app, ["base", "check", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a loadable causal LM" in result.stderr


def test_check_unknown_task_exits_2(tiny_llama_dir: Path) -> None:
    result = runner.invoke(app, ["base", "check", str(tiny_llama_dir), "--task", "sepsis"])
    assert result.exit_code == 2
    assert "unknown task" in result.output


def test_import_command_reports_directory_and_size(tmp_path: Path, monkeypatch) -> None:
    def fake_import(out_dir: Path) -> Path:  # the real import is tested in test_base_model
        out_dir.mkdir()
        provenance = {
            "parameters": 1234,
            "gguf_sha256": "ab" * 32,
            "source_wheel": "w",
            "source_wheel_version": "1",
        }
        (out_dir / base_model.PROVENANCE_FILE).write_text(json.dumps(provenance))
        (out_dir / "model.safetensors").write_bytes(b"\0" * 4096)
        return out_dir

    monkeypatch.setattr(base_model, "import_smollm2", fake_import)
    result = runner.invoke(app, ["base", "import-smollm2", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "imported:" in result.stdout and "1,234 parameters" in result.stdout and "KiB" in result.stdout


def test_import_command_refusal_exits_2(tmp_path: Path, monkeypatch) -> None:
    def refuse(out_dir: Path) -> Path:
        raise FileExistsError(f"{out_dir} exists and is not a lang1ops base-model import")

    monkeypatch.setattr(base_model, "import_smollm2", refuse)
    result = runner.invoke(app, ["base", "import-smollm2", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a lang1ops base-model import" in result.stderr
