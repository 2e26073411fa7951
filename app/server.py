"""Uvicorn around the app, as ``tessera serve`` runs it.

* The listening socket is bound first (:func:`bind`), before the data directory is touched: a
  busy port is one line, not a traceback after the files were registered.
* uvicorn's HTTP/1.1 parser (h11) reads a request line and headers of up to
  :data:`MAX_REQUEST_HEAD` bytes (its default, 16 KiB, cut a long tile filter); the app answers
  a path and query over :data:`~.auth.MAX_URL_BYTES` with 414 JSON, and whatever h11 itself
  refuses (a longer head, a malformed request) gets the JSON error shape too, not uvicorn's
  plain text.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from tessera_gpu.errors import InvalidRequest, error_body
from tessera_gpu.settings import Settings

__all__ = ["MAX_REQUEST_HEAD", "JsonH11Protocol", "bind", "run"]

MAX_REQUEST_HEAD = 1024 * 1024
DRAIN_SECONDS = 10.0


def bind(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (as uvicorn would bind it), or a 400
    ``port_unavailable`` saying why not."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        shown = f"[{address}]" if ":" in address else address
        raise InvalidRequest(
            f"cannot listen on {shown}:{port}: {exc.strerror or exc}; is another server running "
            "there? Stop it, or pick another --port (or TESSERA_PORT)",
            code="port_unavailable",
        ) from None
    sock.set_inheritable(True)
    return sock


class JsonH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, answering what h11 cannot parse with Tessera's error shape.
    The answer is followed by a half-close and the rest of the request is read and dropped
    (for at most :data:`DRAIN_SECONDS`): closing with unread bytes would reset the connection
    and the client would lose the answer."""

    _refused = False

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(error_body(
            f"Invalid HTTP request: malformed, or its request line and headers are over "
            f"{MAX_REQUEST_HEAD // 1024:,} KiB (send long filters in a POST body)",
            "bad_http_request", 400,
        )).encode()  # fmt: skip
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):  # fmt: skip
            self.transport.write(self.conn.send(event) or b"")
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            asyncio.get_running_loop().call_later(DRAIN_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    def eof_received(self) -> None:
        if self._refused:
            self.transport.close()
            return
        super().eof_received()


def run(app: Any, settings: Settings, sock: socket.socket) -> None:
    """Serve ``app`` on the socket :func:`bind` made, until interrupted."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        http=JsonH11Protocol,
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD,
    )
    uvicorn.Server(config).run(sockets=[sock])
