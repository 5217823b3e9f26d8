"""The engine's progress callback for a running job: throttled progress notices,
cancellation between model steps, and background jobs giving way to interactive ones."""

from __future__ import annotations

import time
from collections.abc import Callable

from g4l.context import Context
from g4l.engine.base import Cancelled
from g4l.jobs import lifecycle
from g4l.jobs.records import Job, Priority
from g4l.store.redis_wait import UNAVAILABLE

#: How often the cancel flag (and, for background jobs, the queue) is looked at.
CHECK_EVERY_S = 0.25


class Preempted(Exception):
    """An interactive job is waiting: this background job steps aside (it is put back at
    the front of the background queue and runs again later)."""


class ProgressReporter:
    """``on_progress(step, total)`` for the engine.

    Progress ends below 100 (100 comes with the result). A background job raises
    :class:`Preempted` once an interactive job has been seen waiting at two checks in a
    row (a second worker may take it meanwhile).

    :param expected_steps: the job's whole length in model steps, when it is longer than
        the engine reports (past one model window AudioCraft counts steps per window).
    :param may_give_way: asked once an interactive job has been seen waiting; ``False``
        keeps this job running (a batching worker with a free slot takes the interactive
        job itself, and only one of its background jobs gives way at a time).
    """

    def __init__(self, ctx: Context, job: Job, expected_steps: int = 0,
                 may_give_way: Callable[[], bool] | None = None) -> None:
        self.ctx, self.job = ctx, job
        self.may_give_way = may_give_way
        self.interval = ctx.settings.progress_interval_s
        self.expected_steps = expected_steps
        self._last_sent = 0.0
        self._last_check = 0.0
        self._last_percent = -1
        self._waiting_seen = 0
        # G4L_DEBUG_MODEL_RTF (a test/dev knob): generation is held to that real-time factor.
        self._pace_rtf = ctx.settings.debug_model_rtf
        self._pace_start = 0.0

    def __call__(self, step: int, total: int) -> None:
        """Check cancel / preemption and report progress; while Redis is unavailable the
        generation goes on unreported (its result waits for Redis in the worker)."""
        try:
            self._report(step, total)
        except UNAVAILABLE:
            pass
        if self._pace_rtf > 0:
            self._pace(step, total)

    def _pace(self, step: int, total: int) -> None:
        """Sleep until ``step`` is due at the paced speed: the job's new audio takes
        ``new_seconds / rtf`` wall seconds (a worker thread, never a gevent hub)."""
        now = time.monotonic()
        if not self._pace_start:
            self._pace_start = now
        done = min(1.0, step / max(total, self.expected_steps, 1))
        due = self._pace_start + done * self.job.spec.new_seconds / self._pace_rtf
        if due > now:
            time.sleep(due - now)

    def hold_pace(self, started: float) -> None:
        """With ``G4L_DEBUG_MODEL_RTF``, wait until the whole job is due (``started``: the
        ``time.monotonic()`` when its engine call began). A batched row's callback runs
        beside the decoding loop, not on it, so sleeping there cannot hold the row back;
        this hold is what paces such a job."""
        if self._pace_rtf > 0:
            due = started + self.job.spec.new_seconds / self._pace_rtf
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _report(self, step: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last_check >= CHECK_EVERY_S:
            self._last_check = now
            if self.ctx.jobs.cancel_requested(self.job.id):
                raise Cancelled()
            if self.job.priority is Priority.BACKGROUND:
                self._waiting_seen = self._waiting_seen + 1 if self.ctx.queue.interactive_waiting() else 0
                if self._waiting_seen >= 2 and (self.may_give_way is None or self.may_give_way()):
                    raise Preempted()
        percent = min(99, int(step * 100 / max(total, self.expected_steps, 1)))
        if percent != self._last_percent and now - self._last_sent >= self.interval:
            self._last_sent, self._last_percent = now, percent
            lifecycle.progress(self.ctx, self.job, percent)
