"""Every error the API answers, in one shape: ``{"error": message, "code": code, "status": n}``.

Tessera's own errors carry their message and code. Litestar's (a bad parameter, an unknown
route, a wrong method, a body over the size limit) are mapped to the same shape here, and
anything unexpected becomes a logged 500 that reveals nothing of the server.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException

from tessera_gpu.errors import TesseraError, error_body

__all__ = ["EXCEPTION_HANDLERS"]

log = logging.getLogger("tessera.http")

#: Codes for Litestar's own HTTP errors, by status.
HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "file_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def _json(body: dict[str, object], headers: dict[str, str] | None = None) -> Response[Any]:
    status = body["status"]
    assert isinstance(status, int)
    return Response(body, status_code=status, media_type=MediaType.JSON, headers=headers)


def tessera_error(_: Request[Any, Any, Any], exc: TesseraError) -> Response[Any]:
    retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return _json(exc.to_dict(), retry)


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status >= 500:
        return server_error(request, exc)
    message = _validation_message(exc) if isinstance(exc, ValidationException) else exc.detail
    if status == 404 and message == "Not Found":
        message = f"Not found: {request.method} {request.url.path}"
    elif status == 405:
        message = f"Method not allowed: {request.method} {request.url.path}"
    headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() == "allow"}
    return _json(error_body(message, HTTP_CODES.get(status, f"http_{status}"), status), headers)


def _validation_message(exc: ValidationException) -> str:
    """Litestar lists each bad parameter in ``extra``; name them in the message."""
    problems = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for p in problems:
        if isinstance(p, dict) and p.get("message"):
            source = getattr(p.get("source"), "value", p.get("source"))
            where = f"{source} " if source else ""
            parts.append(f"{where}{p['key']!r}: {p['message']}" if p.get("key") else p["message"])
    if not parts:
        return str(exc.detail)
    return "Invalid request: " + "; ".join(parts)


def server_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return _json(error_body("Internal server error (see the server log)", "internal_error", 500))


def recursion_error(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    """msgspec refuses JSON nested past its depth limit with a RecursionError: a bad request."""
    if "deserializing" in str(exc):
        return _json(error_body("Invalid JSON body: nested too deeply", "invalid_request", 400))
    return server_error(request, exc)


EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    TesseraError: tessera_error,
    HTTPException: http_error,
    RecursionError: recursion_error,
    Exception: server_error,
}
