"""Every error a user can cause, with the message, a stable code and an HTTP status.

Tree::

    TesseraError                 (500)  base; never raised directly for user mistakes
    ├── InvalidDataset           (422)  a file breaks the format contract (code names the rule)
    ├── InvalidRequest           (400)  a filter, sample, tile or CLI request is malformed
    ├── Forbidden                (403)  a path outside the allowed roots
    ├── NotFound                 (404)  unknown dataset, sample, episode or file
    ├── Conflict                 (409)  e.g. K-means sampling in metadata-only mode
    ├── PayloadTooLarge          (413)  an upload over the size limit
    ├── UnsupportedMediaType     (415)  not HDF5, or a preview that is not an allowed image
    ├── Unavailable              (503)  e.g. GPU asked for but absent, projection not ready
    └── InsufficientStorage      (507)  no room on disk (or in memory) for what was asked

The CLI prints ``error: <message>`` and exits non-zero; the HTTP app answers
``{"error": message, "code": code, "status": status}``.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "Forbidden",
    "InsufficientStorage",
    "InvalidDataset",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "TesseraError",
    "Unavailable",
    "UnsupportedMediaType",
    "error_body",
    "needs_embeddings",
]


def error_body(message: str, code: str, status: int) -> dict[str, object]:
    """The one shape of every error Tessera answers: ``{"error", "code", "status"}``."""
    return {"error": message, "code": code, "status": status}


class TesseraError(Exception):
    """Base of every error a user can cause."""

    status: int = 500
    code: str = "error"
    #: Seconds for a ``Retry-After`` header (a busy server's 503), or None.
    retry_after: int | None = None

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after

    def to_dict(self) -> dict[str, object]:
        return error_body(self.message, self.code, self.status)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


class InvalidDataset(TesseraError):
    status = 422
    code = "invalid_dataset"


class InvalidRequest(TesseraError):
    status = 400
    code = "invalid_request"


class Forbidden(TesseraError):
    status = 403
    code = "forbidden"


class NotFound(TesseraError):
    status = 404
    code = "not_found"


class Conflict(TesseraError):
    status = 409
    code = "conflict"


class PayloadTooLarge(TesseraError):
    status = 413
    code = "file_too_large"


class UnsupportedMediaType(TesseraError):
    status = 415
    code = "unsupported_media_type"


class Unavailable(TesseraError):
    status = 503
    code = "unavailable"


class InsufficientStorage(TesseraError):
    status = 507
    code = "insufficient_storage"


def needs_embeddings(dim: int | None, message: str) -> None:
    """The one guard for work a metadata-only dataset (``dim`` None) cannot do: 409
    ``metadata_only`` with ``message`` (what needs them)."""
    if dim is None:
        raise Conflict(message, code="metadata_only")
