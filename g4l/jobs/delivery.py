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
from collections.abc import Callable
from typing import Any

import numpy as np

from g4l.context import Context
from g4l.jobs import handoff
from g4l.log import get_logger
from g4l.store.sessions import Session

log = get_logger(__name__)

#: How long a reader waits for a spliced result's input in GridFS (the web node writes it
#: while the model runs, so it is normally there long before the result).
INPUT_WAIT_S = 30.0
#: How long a reader waits for a result's GridFS file once the hand-off is gone.
STORED_WAIT_S = 30.0
#: A continue's new audio may be a few frames short of the model's nominal length.
TAIL_SLACK_S = 0.01

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
        return ctx.blobs.wait(blob_id, stored_wait_s)
    except KeyError:
        return None


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
    found = handoff.read(ctx.redis_bytes, job_id)
    if found is None:
        return None
    if found.splice is None:
        return bytes(found.data)
    if tail_s is not None:
        new_s = found.data_seconds()
        if new_s is not None and new_s + TAIL_SLACK_S >= tail_s:
            return bytes(found.data)
    input_wav = held(job_id) if held is not None else None
    if input_wav is None:
        input_wav = ctx.blobs.wait(found.splice.input_blob, input_wait_s)
    return offload(functools.partial(found.assemble, as_array=as_array), input_wav)
