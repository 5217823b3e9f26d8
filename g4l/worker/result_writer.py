"""Writes finished session results to GridFS off the job loop, once the client has them.

A result reaches the web node through a short-lived Redis key the moment the model is
done. Writing it to GridFS at the same time (tens of MB, the store's slowest step) made
the store, the worker, the web node and the client share the CPU exactly while the result
was being sent: on a small box that slowed the delivery by a few tenths of a second.
So the write waits until the web node says the result went out (the session's
``delivered`` field), or :data:`DEFER_MAX_S` at most, and runs in this thread while the
worker already takes its next job. The job's stream entry is acknowledged only after
the write: if the worker dies first, recovery stores the result from the Redis key.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from g4l.context import Context
from g4l.jobs import lifecycle
from g4l.jobs.queue import Claimed
from g4l.jobs.records import Job
from g4l.log import get_logger

log = get_logger(__name__)

#: The longest a write waits for the delivery (nobody may be connected to receive it).
DEFER_MAX_S = 3.0
#: Writes waiting at most; a job loop that outpaces the store waits for a free slot.
BACKLOG = 4
_ATTEMPTS = 3


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


def store_result(ctx: Context, w: PendingWrite) -> None:
    """Write a delivered result to GridFS (retrying), then acknowledge its job. After the
    last failed attempt the job stays pending: recovery stores it from the Redis key."""
    started = time.perf_counter()
    wav = w.wav()
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            ctx.blobs.put(wav, blob_id=w.blob_id, **w.meta)
            break
        except Exception as exc:
            log.warning("storing a result failed", job_id=w.job.id, session_id=w.job.session_id,
                        attempt=attempt, error=str(exc)[:200])
            if attempt == _ATTEMPTS:
                return
            time.sleep(1.0)
    store_seconds = round(time.perf_counter() - started, 3)
    ctx.jobs.update(w.job.id, store_seconds=store_seconds)
    lifecycle.acknowledge(ctx, w.claimed)
    log.info("result stored", job_id=w.job.id, session_id=w.job.session_id, blob_id=w.blob_id,
             store_seconds=store_seconds, bytes=len(wav))
