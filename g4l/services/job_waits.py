"""Waiting for a job to end inside a request, without holding the web process's event loop.

The routes that answer with the audio itself (jerry's ``POST /audio/generate``, as the
upstream service does) queue a job like any other and then wait here: woken by the job's
final notice (the relay hands every notice to :meth:`JobWaits.on_notice`), and reading the
record again every :data:`CHECK_S` in case a notice was missed (a Redis reconnect drops
pub/sub messages). Waiting costs a greenlet and an event, nothing on the loop.
"""

from __future__ import annotations

import time
from typing import Any

from gevent.event import Event

from g4l.context import Context
from g4l.jobs import notices
from g4l.jobs.records import Job

#: Seconds between two reads of a waited-for job's record (the fallback to notices).
CHECK_S = 1.0


class JobWaits:
    """Wakes the requests waiting for jobs when their jobs end."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._events: dict[str, set[Event]] = {}

    def on_notice(self, notice: dict[str, Any], positions: Any = None) -> None:
        """A relay hook: a final notice wakes the waiters of its job (``positions``, the
        queue's, is not needed here)."""
        if notice.get("type") in notices.FINAL:
            for event in list(self._events.get(notice.get("job_id") or "", ())):
                event.set()

    def wait(self, job_id: str, timeout_s: float) -> Job | None:
        """The job once it has ended, or as it is after ``timeout_s`` (still pending);
        ``None`` if its record is gone."""
        event = Event()
        self._events.setdefault(job_id, set()).add(event)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                event.clear()
                job = self.ctx.jobs.get(job_id)
                left = deadline - time.monotonic()
                if job is None or job.status.final or left <= 0:
                    return job
                event.wait(min(CHECK_S, left))
        finally:
            waiters = self._events.get(job_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    self._events.pop(job_id, None)
