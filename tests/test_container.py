"""The container contract, without docker: every image, compose's service and every docker
command in the README starts a healthy server (or, for a one-off command, succeeds) when its
process gets exactly the argv and environment the container would give it.

Volumes and the port are mapped to temporary ones (tests/containers.py). The image's own
HEALTHCHECK command then runs against the server, and a browser's first login goes through
``/login?token=...``. The token never reaches the server's log (stderr) or any file.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import free_port
from .containers import (
    COMPOSE,
    DOCKERFILES,
    ROOT,
    Container,
    Deploy,
    Launch,
    image_alone,
    launch,
    parse_dockerfile,
    readme_docker_commands,
)

README = (ROOT / "README.md").read_text()
COMMANDS = readme_docker_commands(README)
LOGIN_LINE = re.compile(r"Log in once: (http://\S+/login\?token=(\S+))$", re.M)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Deploy:
    """The README's docker commands, walked once (compose's token file is written once)."""
    return Deploy(tmp_path_factory.mktemp("checkout")).walk(COMMANDS)


# Each image alone and each README command that starts a container; those that replace the
# entrypoint (`--entrypoint tessera ... doctor`) are one-off commands, the rest are servers.
STARTS = [c for c in COMMANDS if c[:2] in (["docker", "run"], ["docker", "compose"])]
ONE_OFF = [shlex.join(c) for c in STARTS if "--entrypoint" in c]
SERVERS = [f"{p.name} alone" for p in DOCKERFILES] + [
    shlex.join(c) for c in STARTS if "--entrypoint" not in c
]


def container(deploy: Deploy, label: str) -> Container:
    if label.endswith(" alone"):
        return image_alone(parse_dockerfile(ROOT / "docker" / label.split()[0]))
    return next(c for c in deploy.containers if c.label == label)


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text()


@pytest.fixture
def run_server(tmp_path: Path) -> Iterator:
    started: list[Server] = []

    def start(c: Container) -> tuple[Server, Launch]:
        spec = launch(c, tmp_path, free_port())
        out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        with out.open("wb") as o, err.open("wb") as e:
            process = subprocess.Popen(spec.argv, env=spec.env, stdout=o, stderr=e, cwd=tmp_path)
        server = Server(process, f"http://127.0.0.1:{spec.port}", out, err)
        started.append(server)
        return server, spec

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=30)


def wait_healthy(server: Server, c: Container) -> float:
    """Seconds until ``/api/health`` answered 200; fails once Docker would call it unhealthy
    (its start period, then ``retries`` failed checks ``interval`` apart)."""
    image = c.image
    deadline = image.seconds("start-period") + image.retries * image.seconds("interval")
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"{c.label}: exited {server.process.returncode}:\n"
                        f"{server.output()}{server.stderr.read_text()[-3000:]}")  # fmt: skip
        try:
            if httpx.get(server.base + "/api/health", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{c.label}: not healthy within {deadline:.0f} s")


def stop(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(timeout=60)


def first_login(server: Server, login_url: str, upload: Path) -> list[str]:
    """A browser's first visit: the login URL sets the session and redirects to the page; the
    page and the API then answer with that cookie (and refuse without it), and the page's
    upload, which writes to the data dir, passes with the CSRF header. Returns the datasets."""
    assert httpx.get(server.base + "/api/datasets", timeout=10).status_code == 401
    with httpx.Client(base_url=server.base, timeout=60) as browser:
        login = urlsplit(login_url)
        r = browser.get(f"{login.path}?{login.query}")
        assert (r.status_code, r.headers["location"]) == (303, "/")
        assert "tessera_session" in browser.cookies
        page = browser.get(r.headers["location"])
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csrf = {"X-Tessera-CSRF": browser.cookies["tessera_csrf"]}
        files = {"file": (upload.name, upload.read_bytes(), "application/x-hdf5")}
        added = browser.post("/api/datasets", files=files, headers=csrf)
        assert added.status_code == 201, added.text
        datasets = browser.get("/api/datasets")
        assert datasets.status_code == 200
        return sorted(d["name"] for d in datasets.json())


def assert_token_kept_secret(token: str, server: Server, tmp_path: Path, printed: int) -> None:
    assert server.output().count(token) == printed
    assert token not in server.stderr.read_text(), "the token reached the server's log"
    for path in [*(tmp_path / "volumes").rglob("*"), *(tmp_path / "home").rglob("*")]:
        if path.is_file():
            assert token.encode() not in path.read_bytes(), f"the token was written to {path}"


@pytest.mark.parametrize("label", SERVERS)
def test_container_starts_healthy_and_logs_in(
    label: str, deploy: Deploy, run_server, tmp_path: Path, metadata_only_file: Path
) -> None:
    c = container(deploy, label)
    assert c.serves, f"{label} runs {c.argv}, not `tessera serve`"
    server, spec = run_server(c)
    wait_healthy(server, c)
    health = subprocess.run(c.image.healthcheck, env=spec.env, capture_output=True, text=True,
                            timeout=c.image.seconds("timeout"))  # fmt: skip
    assert health.returncode == 0, f"the image's HEALTHCHECK fails: {health.stderr}"

    printed = LOGIN_LINE.findall(server.output())
    given = spec.env.get("TESSERA_TOKEN")
    if given:  # compose: the token from docker/.env, as the README makes it; never printed
        assert printed == []
        token, url = given, f"{server.base}/login?token={given}"
    else:  # no token given: `tessera serve` made one and printed its login URL once
        assert len(printed) == 1, server.output()
        url, token = printed[0]
        assert urlsplit(url).port == spec.port
    names = first_login(server, url, metadata_only_file)
    assert len(names) == (2 if "--demo" in c.argv else 1), names
    stop(server)
    assert server.process.returncode in (0, -signal.SIGTERM)
    data_dir = Path(spec.env["TESSERA_DATA_DIR"])  # the mapped volume: where the writes went
    assert (data_dir / "catalog.sqlite").is_file()
    assert any((data_dir / "uploads").iterdir())
    assert_token_kept_secret(token, server, tmp_path, printed=0 if given else 1)


@pytest.mark.parametrize("label", ONE_OFF)
def test_one_off_commands_succeed(label: str, deploy: Deploy, tmp_path: Path) -> None:
    c = container(deploy, label)
    assert not c.serves
    spec = launch(c, tmp_path, free_port())
    done = subprocess.run(spec.argv, env=spec.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    if c.argv[1:2] == ["doctor"]:
        assert done.stdout.rstrip().splitlines()[-1].startswith("Tessera will use: ")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_doctor_runs_in_the_image_environment(dockerfile: Path, tmp_path: Path) -> None:
    image = parse_dockerfile(dockerfile)
    c = image_alone(image)
    c.argv = ["tessera", "doctor"]  # docker run --entrypoint tessera IMAGE doctor
    spec = launch(c, tmp_path, free_port())
    done = subprocess.run(spec.argv, env=spec.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = done.stdout.rstrip().splitlines()[-1]
    if image.env["TESSERA_DEVICE"] == "cpu":
        assert (
            verdict == "Tessera will use: cpu (--device cpu (or TESSERA_DEVICE=cpu) was asked for)"
        )
    else:
        assert verdict.startswith("Tessera will use: ")
        assert "nothing" not in verdict


# ---- what the README's commands mean, checked without starting anything ---------------------------


def test_readme_reaches_every_image_and_compose(deploy: Deploy) -> None:
    reached = {c.image.dockerfile for c in deploy.containers}
    assert reached == set(DOCKERFILES), "a Dockerfile that no README command builds or runs"
    assert any("compose" in c.label and str(COMPOSE.relative_to(ROOT)) in c.label
               for c in deploy.containers)  # fmt: skip


def test_published_ports_reach_the_server(deploy: Deploy) -> None:
    """Each published port is the image's EXPOSEd TESSERA_PORT, on the same number outside, so
    the login URL the server prints (with its own port) works as printed on the host."""
    for c in deploy.containers:
        for _, outside, inside in c.ports:
            assert inside in c.image.expose, c.label
            assert str(inside) == c.env["TESSERA_PORT"], c.label
            assert outside == inside, c.label
        if c.serves:
            assert c.ports, f"{c.label} publishes no port"
            if not c.env.get("TESSERA_TOKEN"):
                assert all(a in ("127.0.0.1", "localhost") for a, _, _ in c.ports), (
                    f"{c.label}: a server without a token of yours published beyond this host"
                )


def test_data_dir_is_a_volume(deploy: Deploy) -> None:
    for c in deploy.containers:
        assert c.env["TESSERA_DATA_DIR"] in c.image.volumes, c.label
        assert c.env["TESSERA_DATA_DIR"] in c.volumes, c.label


def test_compose_without_the_token_file_fails_as_compose_would(tmp_path: Path) -> None:
    """The old README ran compose without making the token: compose refuses to start."""
    up = [c for c in COMMANDS if c[:2] == ["docker", "compose"]]
    with pytest.raises(AssertionError, match="required variable TESSERA_TOKEN is missing"):
        Deploy(tmp_path).walk(up)
