"""Writes finished session results to GridFS off the job loop, once the client has them.

A result reaches the web node through a short-lived Redis key the moment the model is
done. Writing it to GridFS at the same time (tens of MB, the store's slowest step) made
the store, the worker, the web node and the client share the CPU exactly while the result
was being sent: on a small box that slowed the delivery by a few tenths of a second.
So the write waits until the web node says the result went out (the session's
``delivered`` field), or :data:`DEFER_MAX_S` at most, and runs in this thread while the
worker already takes its next job. The job's stream entry is acknowledged only after
the write: if the worker dies first, recovery stores the result from the Redis key.

A store that refuses the write (down, paused, full) is retried with backoff for up to
``G4L_RESULT_STORE_MAX_S``, the Redis key kept readable meanwhile; past that the job fails
with ``STORE_UNAVAILABLE`` (:func:`g4l.jobs.lifecycle.result_not_stored`): a result is
stored or clearly failed, never left pending on a live worker.
"""

from __future__ import annotations

import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pymongo

from g4l.context import Context
from g4l.errors import G4LError, GenerationFailed, StoreUnavailable
from g4l.jobs import handoff, lifecycle
from g4l.jobs.queue import Claimed
from g4l.jobs.records import Job
from g4l.log import get_logger
from g4l.store import redis_wait

log = get_logger(__name__)

#: The longest a write waits for the delivery (nobody may be connected to receive it).
DEFER_MAX_S = 3.0
#: Writes waiting at most; a job loop that outpaces the store waits for a free slot.
BACKLOG = 4
#: Pauses between two attempts to store a result: doubling from the first to the most.
RETRY_FIRST_S = 1.0
RETRY_MOST_S = 30.0
#: The longest one attempt may take (a result of tens of MB stores in seconds).
ATTEMPT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PendingWrite:
    job: Job
    claimed: Claimed
    blob_id: str
    #: Builds the file (a continue's splice runs here, in the writer's thread).
    wav: Callable[[], bytes]
    meta: dict[str, Any]


class ResultWriter:
    """One background thread that stores results in order and acknowledges their jobs."""

    def __init__(self, ctx: Context, defer_max_s: float = DEFER_MAX_S) -> None:
        self.ctx = ctx
        self.defer_max_s = defer_max_s
        self._queue: queue.Queue[PendingWrite | None] = queue.Queue(maxsize=BACKLOG)
        self._thread = threading.Thread(target=self._run, name="result-writer", daemon=True)
        self._thread.start()

    def submit(self, write: PendingWrite) -> None:
        """Queue a write (blocks while :data:`BACKLOG` writes are waiting)."""
        self._queue.put(write)

    def close(self, timeout: float = 60.0) -> None:
        """Finish the queued writes, then stop."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._write(item)
            except Exception:  # never let one write stop the thread
                log.exception("result write failed", job_id=item.job.id, session_id=item.job.session_id)

    def _write(self, w: PendingWrite) -> None:
        _wait_for_delivery(self.ctx, w.job, self.defer_max_s)
        store_result(self.ctx, w)


def _wait_for_delivery(ctx: Context, job: Job, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        session = ctx.sessions.get(job.session_id)
        if session is None or session.get("delivered") == job.id or session.get("job_id") != job.id:
            return
        time.sleep(0.02)


def store_result(ctx: Context, w: PendingWrite, *, max_s: float | None = None) -> bool:
    """Write a delivered result to GridFS, then acknowledge its job. A store that refuses
    it is retried with backoff (the Redis hand-off kept readable meanwhile) for up to
    ``max_s`` seconds (default ``G4L_RESULT_STORE_MAX_S``); then the job fails with
    ``STORE_UNAVAILABLE``. Returns whether the result was stored."""
    bound = log.bind(job_id=w.job.id, session_id=w.job.session_id, blob_id=w.blob_id)
    started = time.perf_counter()
    limit_s = ctx.settings.result_store_max_s if max_s is None else max_s
    deadline = time.monotonic() + limit_s
    try:
        wav = w.wav()
    except Exception as exc:  # a splice that cannot be built: retrying cannot help
        bound.exception("building a result failed")
        _give_up(ctx, w, GenerationFailed(f"the result could not be assembled: {type(exc).__name__}"[:300],
                                          session_id=w.job.session_id or None))
        return False
    attempt = 0
    while True:
        try:
            # A deadline on every store call of the attempt: a paused store never answers,
            # and without one the write (and the job's entry) would wait as long as it does.
            with pymongo.timeout(min(ATTEMPT_TIMEOUT_S, max(1.0, deadline - time.monotonic()))):
                ctx.blobs.put(wav, blob_id=w.blob_id, **w.meta)
            break
        except Exception as exc:
            left = deadline - time.monotonic()
            bound.warning("storing a result failed", attempt=attempt + 1, retry_for_s=round(max(0.0, left), 1),
                          error=str(exc)[:200])
            if left <= 0:
                _give_up(ctx, w, StoreUnavailable(
                    f"the audio store did not take this result within {limit_s:g} s; it was not kept, "
                    "please send the request again", session_id=w.job.session_id or None))
                return False
            _keep_handoff(ctx, w)
            pause = min(RETRY_MOST_S, RETRY_FIRST_S * 2 ** min(attempt, 16))
            time.sleep(min(left, pause * random.uniform(0.75, 1.25)))  # jitter: workers do not retry in step
            attempt += 1
    store_seconds = round(time.perf_counter() - started, 3)
    _bookkeeping(ctx, w, lambda: ctx.jobs.update(w.job.id, store_seconds=store_seconds))
    _bookkeeping(ctx, w, lambda: lifecycle.acknowledge(ctx, w.claimed))
    bound.info("result stored", store_seconds=store_seconds, bytes=len(wav), attempts=attempt + 1)
    return True


def _keep_handoff(ctx: Context, w: PendingWrite) -> None:
    """Readers get the result from Redis while the store refuses it (best effort)."""
    try:
        handoff.keep(ctx.redis_bytes, w.job.id)
    except Exception as exc:
        log.warning("keeping a result's hand-off failed", job_id=w.job.id, error=str(exc)[:200])


def _give_up(ctx: Context, w: PendingWrite, error: G4LError) -> None:
    _bookkeeping(ctx, w, lambda: lifecycle.result_not_stored(ctx, w.job, w.claimed, error))


def _bookkeeping(ctx: Context, w: PendingWrite, fn: Callable[[], object]) -> None:
    """``fn()``, waiting out a Redis outage (``G4L_REDIS_WAIT_S``): an entry left pending
    on this live worker would stay so until it stops."""
    redis_wait.retry(fn, wait_s=ctx.settings.redis_wait_s, what="a stored result's bookkeeping", job_id=w.job.id)
