"""Structured logs: one JSON line per request and per projection job, with its duration.

``configure_logging()`` sends the ``tessera.*`` loggers to stderr as JSON lines, e.g.::

    {"ts": "2026-11-28T07:10:00Z", "level": "info", "event": "request", "method": "GET",
     "path": "/api/health", "status": 200, "duration_ms": 1.4}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["JsonFormatter", "access_log_middleware", "configure_logging"]

log = logging.getLogger("tessera.http")


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object; ``extra={"fields": {...}}`` adds keys."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """Route ``tessera.*`` to stderr as JSON lines (idempotent)."""
    root = logging.getLogger("tessera")
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def access_log_middleware(app: ASGIApp) -> ASGIApp:
    """Log each HTTP request once it has been answered: method, path, status, duration."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            fields = {
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "duration_ms": round((time.perf_counter() - start) * 1000, 2),
            }
            log.info("request", extra={"fields": fields})

    return middleware
