"""Access control: token (bearer or session cookie), CSRF, Host and Origin allowlists."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from litestar.testing import AsyncTestClient, TestClient
from tessera_app.auth import CSRF_COOKIE, SESSION_COOKIE, csrf_value, session_value
from tessera_app.main import create_app

from tessera_gpu.cli.main import cli
from tessera_gpu.cli.serve import check_exposure, login_token
from tessera_gpu.errors import InvalidRequest
from tessera_gpu.settings import Settings

from .api_calls import TEST_HOSTS, Client, error

pytestmark = pytest.mark.anyio
TOKEN = "s3cret-token-for-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
UNAUTHORIZED = error(
    "authentication required: send 'Authorization: Bearer <token>' or log in at "
    "/login?token=<token>",
    "unauthorized",
    401,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def locked(tmp_path: Path) -> AsyncIterator[Client]:
    settings = Settings(device="cpu", data_dir=tmp_path / "d", token=TOKEN,
                        allowed_host=TEST_HOSTS)  # fmt: skip
    async with AsyncTestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
async def open_client(tmp_path: Path) -> AsyncIterator[Client]:
    async with AsyncTestClient(create_app(Settings(device="cpu", data_dir=tmp_path / "d"))) as c:
        yield c


async def test_health_and_static_stay_open(locked: Client) -> None:
    assert (await locked.get("/api/health")).status_code == 200
    assert (await locked.get("/static/app/api.js")).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/datasets"), ("GET", "/api/schema/openapi.json"),
     ("DELETE", "/api/datasets/abc"), ("POST", "/api/datasets/abc/count")],
)  # fmt: skip
async def test_api_needs_the_token(locked: Client, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = await locked.request(method, path, headers=headers)
        assert (r.status_code, r.json()) == (401, UNAUTHORIZED)
        assert r.headers["www-authenticate"] == "Bearer"
    assert "access-control-allow-origin" not in r.headers


async def test_bearer_token_works_without_csrf(locked: Client) -> None:
    assert (await locked.get("/api/datasets", headers=BEARER)).json() == []
    r = await locked.post("/api/datasets/nope/count", json={}, headers=BEARER)
    assert r.json()["code"] == "dataset_not_found"


async def test_page_says_how_to_log_in(locked: Client) -> None:
    r = await locked.get("/")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("text/plain")
    assert "/login?token=" in r.text
    assert TOKEN not in r.text


async def test_login_sets_a_session_that_is_not_the_token(locked: Client) -> None:
    assert (await locked.get("/login?token=wrong")).status_code == 401
    r = await locked.get(f"/login?token={TOKEN}", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/")
    cookies = r.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith(SESSION_COOKIE + "="))
    assert "HttpOnly" in session
    assert "SameSite=Strict" in session
    assert TOKEN not in session
    csrf = next(c for c in cookies if c.startswith(CSRF_COOKIE + "="))
    assert "HttpOnly" not in csrf
    assert (await locked.get("/api/datasets")).json() == []  # the client keeps the cookies
    assert (await locked.get("/")).status_code == 200


async def test_cookie_session_needs_the_csrf_header(locked: Client) -> None:
    locked.cookies.set(SESSION_COOKIE, session_value(TOKEN))
    r = await locked.post("/api/datasets/nope/count", json={})
    assert r.status_code == 403
    assert r.json()["code"] == "csrf_failed"
    r = await locked.post("/api/datasets/nope/count", json={},
                          headers={"X-Tessera-CSRF": "forged"})  # fmt: skip
    assert r.json()["code"] == "csrf_failed"
    r = await locked.post("/api/datasets/nope/count", json={},
                          headers={"X-Tessera-CSRF": csrf_value(TOKEN)})  # fmt: skip
    assert r.json()["code"] == "dataset_not_found"
    assert (await locked.get("/api/datasets")).status_code == 200  # reads need no header


async def test_a_forged_session_cookie_is_refused(locked: Client) -> None:
    locked.cookies.set(SESSION_COOKIE, TOKEN)
    assert (await locked.get("/api/datasets")).status_code == 401


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.2", "[::2]:80"])
async def test_unknown_host_is_refused(open_client: Client, host: str) -> None:
    r = await open_client.get("/api/health", headers={"Host": host})
    assert r.status_code == 400
    assert r.json()["code"] == "bad_host"


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"])
async def test_loopback_hosts_are_fine(open_client: Client, host: str) -> None:
    assert (await open_client.get("/api/health", headers={"Host": host})).status_code == 200


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost:9999"])
async def test_cross_origin_writes_are_refused(open_client: Client, origin: str) -> None:
    headers = {"Host": "localhost:8000", "Origin": origin}
    r = await open_client.post("/api/datasets/x/count", json={}, headers=headers)
    assert (r.status_code, r.json()["code"]) == (403, "bad_origin")
    same = {"Host": "localhost:8000", "Origin": "http://localhost:8000"}
    r = await open_client.post("/api/datasets/x/count", json={}, headers=same)
    assert r.json()["code"] == "dataset_not_found"
    assert (await open_client.get("/api/health", headers=headers)).status_code == 200


def test_settings_never_show_the_token() -> None:
    assert TOKEN not in repr(Settings(token=TOKEN))


@pytest.mark.parametrize(
    ("args", "env", "made"),
    [(["--host", "0.0.0.0"], {}, True), (["--host", "10.1.2.3"], {}, True),
     (["--host", "0.0.0.0", "--insecure"], {}, False),
     (["--host", "0.0.0.0"], {"TESSERA_INSECURE": "1"}, False),
     (["--host", "0.0.0.0"], {"TESSERA_TOKEN": TOKEN}, False),
     (["--host", "0.0.0.0", "--token", TOKEN], {}, False),
     (["--host", "::1"], {}, False), (["--host", "localhost"], {}, False)],
)  # fmt: skip
def test_serve_makes_a_token_for_an_exposed_host_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], env: dict[str, str],
    made: bool,
) -> None:  # fmt: skip
    """Jupyter's way: an exposed bind with no token and no --insecure gets a fresh token, and
    its login URL is printed once; a given token, --insecure and loopback binds print none."""
    import tessera_app.server as server

    class Bound:  # the socket tessera serve would listen on (10.1.2.3 is not this machine's)
        def getsockname(self) -> tuple[str, int]:
            return (args[1], 8000)

        def close(self) -> None:
            pass

    seen: dict[str, Any] = {}
    monkeypatch.setattr(server, "bind", lambda host, port: Bound())
    monkeypatch.setattr(server, "run", lambda app, settings, sock: seen.update(
        host=settings.host, app=app))  # fmt: skip
    for k in ("TESSERA_TOKEN", "TESSERA_INSECURE"):
        monkeypatch.delenv(k, raising=False)
    cmd = ["serve", *args, "--data-dir", str(tmp_path / "d"), "--device", "cpu"]
    result = CliRunner().invoke(cli, cmd, env=env)
    assert result.exit_code == 0, result.output
    assert seen["host"] == args[1]
    urls = re.findall(r"Log in once: (http://\S+/login\?token=(\S+))$", result.output, re.M)
    assert TOKEN not in result.output
    if not made:
        assert urls == []
        assert "login?token" not in result.output
        return
    [(url, token)] = urls
    browse = "127.0.0.1" if args[1] == "0.0.0.0" else args[1]
    assert url == f"http://{browse}:8000/login?token={token}"
    assert len(token) >= 40
    assert result.output.count(token) == 1
    for path in (tmp_path / "d").rglob("*"):  # nothing in the data dir holds it
        assert token not in path.name
        assert not (path.is_file() and token.encode() in path.read_bytes())
    with TestClient(seen["app"]) as c:  # the app now requires exactly that token
        h = {"Host": f"{browse}:8000"}
        assert c.get("/api/datasets", headers=h).status_code == 401
        r = c.get(f"/login?token={token}", headers=h, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/")
        assert c.get("/api/datasets", headers=h).status_code == 200


def test_each_run_makes_its_own_token() -> None:
    exposed = Settings(host="0.0.0.0")
    (a, url_a), (b, url_b) = login_token(exposed), login_token(exposed)
    assert a.token
    assert b.token
    assert a.token != b.token
    assert url_a != url_b
    assert TOKEN not in repr(a)
    assert a.token not in repr(a)


@pytest.mark.parametrize(
    ("host", "browse"),
    [("0.0.0.0", "127.0.0.1"), ("::", "[::1]"), ("10.1.2.3", "10.1.2.3"),
     ("fd00::5", "[fd00::5]"), ("[fd00::5]", "[fd00::5]"), ("gpu-box.lan", "gpu-box.lan")],
)  # fmt: skip
def test_login_url_names_a_reachable_host(host: str, browse: str) -> None:
    settings, url = login_token(Settings(host=host, port=8123))
    assert url == f"http://{browse}:8123/login?token={settings.token}"
    check_exposure(settings)  # the guard after it passes


@pytest.mark.parametrize(
    "settings",
    [Settings(host="0.0.0.0", token=TOKEN), Settings(host="0.0.0.0", insecure=True),
     Settings(host="127.0.0.1"), Settings(host="::1"), Settings(host="localhost")],
)  # fmt: skip
def test_no_token_is_made_when_none_is_needed(settings: Settings) -> None:
    assert login_token(settings) == (settings, None)


def test_the_guard_still_refuses_an_exposed_host_without_a_token() -> None:
    with pytest.raises(InvalidRequest, match=r"refusing to listen on 0\.0\.0\.0 without --token"):
        check_exposure(Settings(host="0.0.0.0"))
