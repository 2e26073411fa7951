"""Receive a multipart upload straight to disk, hashing it and enforcing the size limit as it comes.

The request body is never held in memory: each chunk the server receives goes through
``multipart``'s push parser into a temporary file in the data directory. The caller
validates that file and renames it into place, or deletes it (:meth:`Upload.discard`).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from multipart import MultipartError, MultipartSegment, PushMultipartParser

from tessera_gpu.core.datadir import DataDir
from tessera_gpu.core.uploads import Upload
from tessera_gpu.errors import InvalidRequest, PayloadTooLarge

__all__ = ["FIELD", "MULTIPART_OVERHEAD", "receive_upload"]

FIELD = "file"
#: Room for boundaries, part headers and small form fields on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"File too large: more than {limit / 1e6:.1f} MB, the upload limit "
        f"(start the server with --max-upload-mb to raise it)",
        code="file_too_large",
    )


async def receive_upload(
    chunks: AsyncIterator[bytes], boundary: str, data: DataDir, *, limit: int
) -> Upload:
    """Stream the multipart field ``file`` into a temporary file; other fields are skipped."""
    path, out = data.new_upload()
    try:
        upload = await _pump(chunks, boundary.encode("latin-1"), out, path, limit)
    except BaseException:
        out.close()
        path.unlink(missing_ok=True)
        raise
    out.close()
    return upload


async def _pump(
    chunks: AsyncIterator[bytes], boundary: bytes, out: IO[bytes], path: Path, limit: int
) -> Upload:
    hasher = hashlib.sha256()
    size, total, filename, in_file, done = 0, 0, None, False, False
    try:
        with PushMultipartParser(boundary, max_segment_count=16) as parser:
            async for chunk in chunks:
                total += len(chunk)
                if total > limit + MULTIPART_OVERHEAD:  # other fields count too
                    raise too_large(limit)
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        in_file = event.name == FIELD and filename is None and not done
                        if in_file:
                            filename = event.filename or "upload.h5"
                    elif event is None:
                        done = done or in_file
                        in_file = False
                    elif in_file:
                        size += len(event)
                        if size > limit:
                            raise too_large(limit)
                        hasher.update(event)
                        out.write(event)
                if parser.closed:
                    break
    except MultipartError as exc:
        raise InvalidRequest(f"Malformed multipart upload: {exc}", code="bad_multipart") from None
    if not done or filename is None:
        raise InvalidRequest(
            f"Upload is missing the multipart field {FIELD!r} (send the HDF5 file as {FIELD}=@…)",
            code="missing_file",
        )
    out.flush()
    return Upload(path=path, filename=filename, sha256=hasher.hexdigest(), size=size)
