"""OpenAPI details Litestar cannot infer: the two bodies ``POST /api/datasets`` accepts.

That handler reads the raw request (to stream an upload to disk), so its request body is
described here by hand: multipart with a binary ``file``, or JSON with a ``path``.
"""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

__all__ = ["DatasetRegistration"]

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
    required=["path"],
    properties={
        "path": Schema(
            type=OpenAPIType.STRING,
            description="A file on the server, inside an --allow-path directory.",
        )
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
