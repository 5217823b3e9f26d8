"""Reading a finished job's result, wherever it is: the one delivery path.

A worker leaves the result in a short-lived Redis hand-off (:mod:`g4l.jobs.handoff`) the
moment the model is done and stores it in GridFS a little later. Every reader (the web
node sending it to a socket, an HTTP download or poll, the HLS packager, the recovery of
a dead worker's job) calls :func:`read_result`, which takes the hand-off when it is still
there (joining a spliced one to the input: the copy this web node holds, else the
input's GridFS copy) and falls back to the GridFS file.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from bson import ObjectId
from bson.errors import InvalidId

from g4l.context import Context
from g4l.jobs import handoff
from g4l.log import get_logger
from g4l.store.blobs import CHUNK_BYTES
from g4l.store.sessions import Session

log = get_logger(__name__)

#: How long a reader waits for a spliced result's input in GridFS (the web node writes it
#: while the model runs, so it is normally there long before the result).
INPUT_WAIT_S = 30.0
#: How long a reader waits for a result's GridFS file once the hand-off is gone.
STORED_WAIT_S = 30.0
#: A continue's new audio may be a few frames short of the model's nominal length.
TAIL_SLACK_S = 0.01
#: Results and inputs are read in pieces of about this size (a Redis ``GETRANGE``, a few
#: GridFS chunks a batch): each piece is a round trip that lets a web node's other
#: greenlets run, where one 20 MB ``GET`` or a 16 MB GridFS batch held its event loop for
#: 50-70 ms (parsed and copied in one go, every byte already there).
PIECE_BYTES = 1024 * 1024

Held = Callable[[str], bytes | None]
Offload = Callable[..., Any]


def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def read_result(ctx: Context, job_id: str | None, blob_id: str | None, *, held: Held | None = None,
                offload: Offload = _inline, as_array: bool = False, tail_s: float | None = None,
                input_wait_s: float = INPUT_WAIT_S, stored_wait_s: float = STORED_WAIT_S
                ) -> bytes | np.ndarray | None:
    """The result WAV of ``job_id`` (hand-off first), else the GridFS file ``blob_id``
    (waited for up to ``stored_wait_s``); None when neither has it.

    :param held: ``held(job_id)``: the input this process still holds for a spliced
        hand-off (the web node's copy of the client's upload), or None.
    :param offload: runs the join (a copy of tens of MB) off an event loop.
    :param as_array: the joined file as a ``uint8`` array (built without the GIL).
    :param tail_s: the reader needs only the last ``tail_s`` seconds: a spliced
        hand-off whose new audio covers them is returned as that new audio alone.
    :param input_wait_s: how long to wait for a spliced hand-off's input in GridFS.
    """
    if job_id:
        try:
            result = _from_handoff(ctx, job_id, held, offload, as_array, tail_s, input_wait_s)
        except (KeyError, ValueError):  # unreadable, or its input gone: the stored file
            log.warning("result hand-off unusable; reading the stored file", job_id=job_id, blob_id=blob_id)
            result = None
        if result is not None:
            return result
    if not blob_id:
        return None
    try:
        return read_stored(ctx, blob_id, stored_wait_s, offload=offload)
    except KeyError:
        return None


def read_stored(ctx: Context, blob_id: str, wait_s: float, *, offload: Offload = _inline,
                poll_s: float = 0.05) -> bytes:
    """The GridFS file ``blob_id``, waited for up to ``wait_s`` (another process stores it
    meanwhile), read one chunk per round trip (:data:`PIECE_BYTES`) rather than in 16 MB
    batches, so a web node's event loop keeps serving while it arrives; the pieces are
    joined by ``offload`` (``bytes.join`` drops the GIL). Same bytes as
    ``BlobStore.wait``, which it falls back to if the chunks do not add up.

    :raises KeyError: it did not arrive in time."""
    try:
        file_id = ObjectId(blob_id)
    except (InvalidId, TypeError):
        raise KeyError(blob_id) from None
    deadline = time.monotonic() + wait_s
    # GridFS writes the chunks first and the files document last: once it is there, so are they.
    while (info := ctx.blobs.info(blob_id)) is None:
        if time.monotonic() >= deadline:
            raise KeyError(blob_id)
        time.sleep(poll_s)  # yields to the other greenlets in a gevent-patched process
    # The bucket's chunks collection (``audio.chunks`` beside ``audio.files``); chunks are
    # CHUNK_BYTES (1 MiB), so one chunk per batch is one piece.
    chunks = ctx.blobs.db[ctx.blobs.files.name.removesuffix(".files") + ".chunks"]
    per_batch = max(1, PIECE_BYTES // CHUNK_BYTES)
    pieces: list[bytes] = []
    size = 0
    for doc in chunks.find({"files_id": file_id}, sort=[("n", 1)], batch_size=per_batch):
        if doc["n"] != len(pieces):
            break
        pieces.append(doc["data"])
        size += len(doc["data"])
    if size != info.length:  # deleted or rewritten meanwhile: the store's own reader decides
        log.warning("stored file read in pieces did not add up; reading it whole", blob_id=blob_id)
        return ctx.blobs.wait(blob_id, max(0.0, deadline - time.monotonic()))
    return pieces[0] if len(pieces) == 1 else offload(b"".join, pieces)


def session_audio(ctx: Context, session: Session, *, held: Held | None = None, offload: Offload = _inline,
                  stored_wait_s: float = 0.0) -> bytes | None:
    """A session's current audio: its last job's hand-off while that is still the current
    audio (GridFS may not have it yet), else the stored file. None when it has none."""
    blob = session.get("current_blob") or None
    if blob is None:
        return None
    # A crop or upload since the last generation made another file current.
    job_id = session.get("job_id") if blob == session.get("last_output_blob") else None
    data = read_result(ctx, job_id or None, blob, held=held, offload=offload, stored_wait_s=stored_wait_s)
    return bytes(data) if data is not None else None


def _from_handoff(ctx: Context, job_id: str, held: Held | None, offload: Offload, as_array: bool,
                  tail_s: float | None, input_wait_s: float) -> bytes | np.ndarray | None:
    found = handoff.read(ctx.redis_bytes, job_id, piece_bytes=PIECE_BYTES)
    if found is None:
        return None
    if found.splice is None:
        # As an array it is a view of the buffer read (no copy of tens of MB on a loop).
        return np.frombuffer(found.data, dtype=np.uint8) if as_array else bytes(found.data)
    if tail_s is not None:
        new_s = found.data_seconds()
        if new_s is not None and new_s + TAIL_SLACK_S >= tail_s:
            return bytes(found.data)
    input_wav = held(job_id) if held is not None else None
    if input_wav is None:
        input_wav = read_stored(ctx, found.splice.input_blob, input_wait_s, offload=offload)
    return offload(functools.partial(found.assemble, as_array=as_array), input_wav)
