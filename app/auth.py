"""Access control, as one ASGI middleware in front of every route.

* **Length**: a path and query over :data:`MAX_URL_BYTES` is 414 ``uri_too_long`` (a
  filter that long belongs in a POST body).
* **Host allowlist** (DNS rebinding): the ``Host`` header must name the bound host,
  localhost, 127.0.0.1, [::1] or an ``--allowed-host``, else 400 ``bad_host``. A wildcard
  bind (0.0.0.0, ::) with no ``--allowed-host`` cannot know its names and accepts any.
* **Origin**: a state-changing request (POST/PUT/PATCH/DELETE) whose ``Origin`` is not the
  ``Host`` it was sent to is refused, 403 ``bad_origin``. No CORS headers are ever sent.
* **Token** (with ``--token``): every route but ``GET /api/health`` and ``/static/*``
  needs ``Authorization: Bearer <token>`` or the session cookie that ``/login?token=...``
  sets (an HMAC of the token, HttpOnly, SameSite=Strict), else 401 ``unauthorized``.
* **CSRF**: a state-changing request authenticated by the cookie must echo the
  ``tessera_csrf`` cookie in ``X-Tessera-CSRF`` (double submit), else 403 ``csrf_failed``.

The token is compared in constant time and never logged; the cookies never hold it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

from litestar import MediaType, Response, get
from litestar.types import ASGIApp, Receive, Scope, Send

from tessera_gpu.errors import error_body
from tessera_gpu.settings import Settings

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "MAX_URL_BYTES",
    "SESSION_COOKIE",
    "allowed_hosts",
    "auth_middleware_factory",
    "csrf_value",
    "login",
    "session_value",
]

MAX_URL_BYTES = 512 * 1024
SESSION_COOKIE = "tessera_session"
CSRF_COOKIE = "tessera_csrf"
CSRF_HEADER = "x-tessera-csrf"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - names to compare, not a bind
LOGIN_HELP = (
    "Authentication required: open /login?token=YOUR_TOKEN (the server's --token or "
    "TESSERA_TOKEN) once in this browser, or send 'Authorization: Bearer YOUR_TOKEN'.\n"
)


def _derive(token: str, purpose: bytes) -> str:
    return hmac.new(token.encode(), purpose, hashlib.sha256).hexdigest()


def session_value(token: str) -> str:
    """What the session cookie holds: an HMAC of the token, never the token."""
    return _derive(token, b"tessera session v1")


def csrf_value(token: str) -> str:
    """The CSRF cookie's value, which the page echoes in ``X-Tessera-CSRF``."""
    return _derive(token, b"tessera csrf v1")


def _same(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode("utf-8", "replace"), b.encode())


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """Host names the server answers to (lower case, no port, no brackets); None: any."""
    extra = {h.strip().strip("[]").lower() for h in settings.allowed_host if h.strip()}
    if "*" in extra:
        return None
    bound = settings.host.strip("[]").lower()
    if bound in WILDCARD and not extra:
        return None
    names = set(LOOPBACK) | extra
    if bound not in WILDCARD:
        names.add(bound)
    return frozenset(names)


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def auth_middleware_factory(settings: Settings) -> Any:
    """The middleware for these settings (``create_app`` adds it)."""
    hosts = allowed_hosts(settings)
    token = settings.token

    def auth_middleware(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            length = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
            if length > MAX_URL_BYTES:
                await _error(send, f"The URL is too long: {length:,} bytes, more than "
                             f"{MAX_URL_BYTES:,}; send long filters in a POST body (count, "
                             "samples, selections)", "uri_too_long", 414)  # fmt: skip
                return
            headers = _headers(scope["headers"])
            method = str(scope.get("method", ""))
            path = scope["path"]
            host = headers.get("host", "")
            if hosts is not None and _host_name(host) not in hosts:
                await _error(
                    send,
                    "Host header not allowed: start the server with "
                    "--allowed-host NAME to answer to another name",
                    "bad_host",
                    400,
                )
                return  # fmt: skip
            origin = headers.get("origin")
            cross = origin is not None and urlsplit(origin).netloc.lower() != host.lower()
            if method in UNSAFE and cross:
                await _error(send, "Cross-origin request refused (Origin does not match Host)",
                             "bad_origin", 403)  # fmt: skip
                return
            if token is None or _public(method, path):
                await app(scope, receive, send)
                return
            if path == "/login":
                await _login(scope, send, token)
                return
            auth = headers.get("authorization", "")
            if auth[:7].lower() == "bearer " and _same(auth[7:].strip(), token):
                await app(scope, receive, send)
                return
            cookies = _cookies(headers.get("cookie", ""))
            if not _same(cookies.get(SESSION_COOKIE), session_value(token)):
                if path.startswith("/api/"):
                    await _error(send, "authentication required: send 'Authorization: Bearer "
                                 "<token>' or log in at /login?token=<token>", "unauthorized",
                                 401, [(b"www-authenticate", b"Bearer")])  # fmt: skip
                else:
                    await _plain(send, 401, LOGIN_HELP)
                return
            if method in UNSAFE and not _same(headers.get(CSRF_HEADER), csrf_value(token)):
                await _error(send, "CSRF check failed: send the tessera_csrf cookie's value in "
                             "the X-Tessera-CSRF header", "csrf_failed", 403)  # fmt: skip
                return
            await app(scope, receive, send)

        return middleware

    return auth_middleware


@get("/login", include_in_schema=False, sync_to_thread=False)
def login() -> Response[str]:
    """Only reached without a token (with one, the middleware answers): nothing to log in to."""
    return Response("This server has no token: no login needed.\n", status_code=404,
                    media_type=MediaType.TEXT)  # fmt: skip


def _public(method: str, path: str) -> bool:
    if path.startswith("/static/"):
        return True
    return path.rstrip("/") == "/api/health" and method in ("GET", "HEAD")


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in raw:
        out.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
    return out


def _cookies(raw: str) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header is no session
        return {}
    return {k: m.value for k, m in jar.items()}


async def _login(scope: Scope, send: Send, token: str) -> None:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    given = query.get("token", [""])[0]
    if scope.get("method") not in ("GET", "HEAD") or not _same(given, token):
        await _plain(send, 401, "Wrong or missing token. " + LOGIN_HELP)
        return
    common = "Path=/; SameSite=Strict; Max-Age=2592000"
    headers: list[tuple[bytes, bytes]] = [
        (b"location", b"/"),
        (b"cache-control", b"no-store"),
        (b"referrer-policy", b"no-referrer"),
        (b"set-cookie", f"{SESSION_COOKIE}={session_value(token)}; HttpOnly; {common}".encode()),
        (b"set-cookie", f"{CSRF_COOKIE}={csrf_value(token)}; {common}".encode()),
        (b"content-length", b"0"),
    ]
    start: Any = {"type": "http.response.start", "status": 303, "headers": headers}
    await send(start)
    end: Any = {"type": "http.response.body", "body": b""}
    await send(end)


async def _error(
    send: Send,
    message: str,
    code: str,
    status: int,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    body = json.dumps(error_body(message, code, status)).encode()
    await _send(send, status, body, b"application/json", list(extra))


async def _plain(send: Send, status: int, text: str) -> None:
    await _send(send, status, text.encode(), b"text/plain; charset=utf-8", [])


async def _send(
    send: Send, status: int, body: bytes, media: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", media),
        (b"content-length", str(len(body)).encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"cache-control", b"no-store"),
        *extra,
    ]
    start: Any = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    end: Any = {"type": "http.response.body", "body": body}
    await send(end)
