"""Streaming a stored WAV from GridFS over HTTP: ``Content-Length``, ``ETag``, and single
byte ranges (``Range: bytes=a-b``, ``a-``, ``-n``) answered 206, as media players and
resumable downloads (URLSession) use them."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from flask import Response, request

from g4l.errors import NotFound, RangeNotSatisfiable
from g4l.store.blobs import BlobStore
from g4l.web.api.routing import error_response

if TYPE_CHECKING:
    from g4l.services.auth import Caller
    from g4l.services.jobs import JobService

PIECE = 1024 * 1024


def file_responses(media: str = "audio/wav", what: str = "The WAV file") -> dict[int, tuple[str, str]]:
    """The ``responses`` of an :func:`~g4l.web.api.routing.operation` served by :func:`send_blob`."""
    return {200: (media, what), 206: (media, "The requested byte range")}


#: The errors of a result download: 409 while the job is not done, 416 for a range past the end.
DOWNLOAD_ERRORS = (409, 416)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a ``Range`` header asks for; ``None`` for the whole file
    (no header, several ranges, or a unit we do not serve: RFC 9110 lets us ignore it).

    :raises RangeNotSatisfiable: a range that starts past the end.
    """
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    # Beyond 18 digits a number is past any file (and past int()'s 4300-digit limit: a 500).
    first, last = (g if len(g) <= 18 else "9" * 18 for g in m.groups())
    if not first and not last:
        return None
    if not first:  # the last n bytes
        n = int(last)
        if n == 0:
            raise RangeNotSatisfiable("the range is empty")
        return max(size - n, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable(f"the range starts past the end of the {size}-byte file")
    return start, end


def _pieces(reader, start: int, length: int) -> Iterator[bytes]:
    try:
        reader.seek(start)
        left = length
        while left > 0:
            data = reader.read(min(PIECE, left))
            if not data:
                break
            left -= len(data)
            yield data
    finally:
        reader.close()


class _Memory(io.BytesIO):
    """A result still in flight to GridFS, read like a GridOut."""

    @property
    def length(self) -> int:
        return len(self.getbuffer())


def send_blob(blobs: BlobStore, blob_id: str, filename: str,
              in_flight: Callable[[], bytes | None] | None = None, mimetype: str = "audio/wav") -> Response:
    """The blob as ``mimetype``, whole or the requested range, streamed in 1 MB pieces.

    :param in_flight: where else the bytes may be while GridFS is still storing them (a
        finished session job's result waits in Redis for a moment).
    """
    try:
        reader: Any = blobs.open(blob_id)
    except KeyError:
        data = in_flight() if in_flight is not None else None
        if data is None:
            raise NotFound("the audio is gone (retention)") from None
        reader = _Memory(data)
    size = int(reader.length)
    try:
        span = parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable as exc:
        reader.close()
        resp = error_response(exc)
        resp.headers["Content-Range"] = f"bytes */{size}"
        return resp
    etag = f'"{blob_id}"'
    if span is not None and request.headers.get("If-Range") not in (None, etag):
        span = None  # the client's partial copy is of another file: send it all
    start, end = span if span is not None else (0, size - 1)
    length = max(end - start + 1, 0)
    resp = Response(_pieces(reader, start, length), status=206 if span else 200, mimetype=mimetype,
                    direct_passthrough=True)
    resp.headers["Content-Length"] = str(length)
    resp.headers["Accept-Ranges"] = "bytes"
    resp.headers["ETag"] = etag
    resp.headers["Cache-Control"] = "private, max-age=86400"
    resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    if span:
        resp.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return resp


def send_result_wav(jobs: JobService, blob_id: str, name: str, job_id: str | None) -> Response:
    """A job's result WAV as ``<name>.wav`` (:func:`send_blob`); while GridFS is still storing
    it, the copy the finished job left in Redis."""
    return send_blob(jobs.ctx.blobs, blob_id, f"{name}.wav", in_flight=lambda: jobs.in_flight(job_id))


def send_job_wav(jobs: JobService, caller: Caller, job_id: str) -> Response:
    """A finished job's result as ``<job_id>.wav``, the download of every protocol that has one."""
    return send_result_wav(jobs, jobs.result_blob(caller, job_id), job_id, job_id)
