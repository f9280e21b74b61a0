"""The packages form a ladder: each imports only the floors below it, so a change in one room
never ripples upward and a newcomer can tell which package may depend on which.

    app          the top floor: command line, demo, the whole service assembled
    monitoring   drift, retraining loop, alerts (reads what serving stored, calls training)
    integration  EHR-facing standards (FHIR client, CDS Hooks, Subscriptions, Bulk export)
    training     labeled data, finetuning, evaluation
    serving      HTTP API, Ray Serve app, backends, auth, views, the store
    lang1ops     the core: tasks and prompts, artifacts, FHIR notes and records, the scorer,
                 the registry and its gate, metrics, settings; imports no other package

Every import counts, including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LADDER = ["lang1ops", "serving", "training", "integration", "monitoring", "app"]  # bottom to top


def imported_packages(source: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def upward_imports(root: Path = ROOT) -> list[str]:
    """'path:line imports package' for every import of a floor above the importing package's."""
    floor = {name: i for i, name in enumerate(LADDER)}
    problems = []
    for package in LADDER:
        for path in sorted((root / package).rglob("*.py")):
            for line, target in imported_packages(path.read_text()):
                if target in floor and floor[target] > floor[package]:
                    problems.append(f"{path.relative_to(root)}:{line} imports {target}")
    return problems


def test_every_package_imports_only_the_floors_below_it():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import_even_inside_a_function(tmp_path):
    for package in LADDER:
        (tmp_path / package).mkdir()
    (tmp_path / "serving" / "api.py").write_text("def handler():\n    from integration.notes import ClinicalNote\n")
    (tmp_path / "training" / "fit.py").write_text("import lang1ops.metrics\nfrom serving import scorer\n")
    (tmp_path / "lang1ops" / "core.py").write_text("import monitoring.metrics as prom\n")
    assert upward_imports(tmp_path) == ["lang1ops/core.py:1 imports monitoring", "serving/api.py:2 imports integration"]


@pytest.mark.parametrize("package", LADDER)
def test_every_floor_exists(package):
    assert (ROOT / package / "__init__.py").exists()
