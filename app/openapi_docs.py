"""OpenAPI details Litestar cannot infer.

* The two bodies ``POST /api/datasets`` accepts: that handler reads the raw request (to
  stream an upload to disk), so its request body is described here by hand: multipart with a
  binary ``file``, or JSON with a ``path``.
* The error shape: every 4xx/5xx answer is ``{"error", "code", "status"}``
  (:mod:`.error_handlers`), not Litestar's default, so :func:`document_errors` points every
  error response at one ``Error`` schema and adds ``4XX`` and ``5XX`` to each operation.
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar import Litestar
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)

__all__ = ["DatasetRegistration", "document_errors"]

ERROR = Schema(
    type=OpenAPIType.OBJECT,
    required=["error", "code", "status"],
    properties={
        "error": Schema(type=OpenAPIType.STRING, description="What went wrong, in words."),
        "code": Schema(
            type=OpenAPIType.STRING,
            description="A stable code for programs, e.g. not_hdf5, bad_filter, n_too_large.",
        ),
        "status": Schema(type=OpenAPIType.INTEGER, description="The HTTP status, repeated."),
    },
    description="Every error Tessera answers. 503 and queue-full answers add Retry-After.",
)
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

_UPLOAD = Schema(
    type=OpenAPIType.OBJECT,
    required=["file"],
    properties={
        "file": Schema(
            type=OpenAPIType.STRING,
            format=None,
            content_media_type="application/x-hdf5",
            description="The HDF5 episode file (at most --max-upload-mb).",
        )
    },
)
_PATH = Schema(
    type=OpenAPIType.OBJECT,
    description='{"path": ...} or {"paths": [...]}: one dataset, joined across the files.',
    properties={
        "path": Schema(
            type=OpenAPIType.STRING,
            description="A file on the server, inside an --allow-path directory (a glob such "
            "as shards/*.h5 joins its matches).",
        ),
        "paths": Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(type=OpenAPIType.STRING),
            description="Files (or globs) joined into one dataset: one map across them, each "
            "episode's file in the 'source' field. Same D in every file; unique episode ids.",
        ),
        "name": Schema(type=OpenAPIType.STRING, description="The dataset's display name."),
    },
)


@dataclass
class DatasetRegistration(Operation):
    """The ``addDataset`` operation, with its hand-written request body."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description="An upload (multipart field 'file') or a path on the server (JSON).",
            content={
                "multipart/form-data": OpenAPIMediaType(schema=_UPLOAD),
                "application/json": OpenAPIMediaType(schema=_PATH),
            },
        )


def document_errors(app: Litestar) -> None:
    """Describe every error response of ``app``'s schema as :data:`ERROR` (call at start-up)."""
    openapi = app.openapi_schema
    if openapi.components.schemas is None:
        openapi.components.schemas = {}
    openapi.components.schemas["Error"] = ERROR
    body = {"application/json": OpenAPIMediaType(schema=Reference("#/components/schemas/Error"))}
    for item in (openapi.paths or {}).values():
        for method in _METHODS:
            operation = getattr(item, method, None)
            if operation is None:
                continue
            responses = operation.responses or {}
            for status, response in responses.items():
                if status[:1] in "45" and isinstance(response, OpenAPIResponse):
                    response.content = body
            for status, words in (("4XX", "Client error"), ("5XX", "Busy or not ready (503)")):
                responses.setdefault(status, OpenAPIResponse(description=words, content=body))
            operation.responses = responses
