"""The life of a job: the only module that changes a job's status.

Each transition writes the job record, the session's view of it (only while the session's
current job is still this one) and the notice together, and acknowledges the job's stream
entry when it ends, so a job is never "in progress" in one place and finished in another:

    queued --start--> running --complete--> completed
       ^                 |  \\--fail------> failed
       |                 |   \\-cancel----> canceled
       +----requeue------+   (a dead worker's job, a background job giving way)

A queued job can be canceled or failed directly (:func:`request_cancel`, recovery). A
completed job whose result the store never took ends failed (:func:`result_not_stored`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from g4l.context import Context
from g4l.errors import G4LError
from g4l.jobs import handoff, notices
from g4l.jobs.queue import Claimed
from g4l.jobs.records import Job, JobStatus
from g4l.log import get_logger
from g4l.store.history import VersionRecord
from g4l.store.retention import prune_history

log = get_logger(__name__)


@dataclass
class Completion:
    """What a finished job produced.

    :param blob_id: its result's GridFS id (stored already, or about to be).
    :param session: the fields its session learns (kind-specific: see the job kinds).
    :param record: extra fields for the job record (timings, the result's metadata).
    :param notice: extra fields of the COMPLETED notice.
    :param version: the session version it adds (a device session's generation), made
        current with the session's other fields in one atomic write.
    """

    blob_id: str
    session: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    notice: dict[str, Any] = field(default_factory=dict)
    version: VersionRecord | None = None


def start(ctx: Context, job: Job, worker: str, claimed: Claimed) -> None:
    """A worker took the job."""
    ctx.queue.mark_running(claimed)
    job.status, job.worker, job.started, job.progress = JobStatus.RUNNING, worker, time.time(), 0
    job.attempts += 1
    ctx.jobs.update(job.id, status=job.status, worker=worker, started=job.started, attempts=job.attempts,
                    progress=0)
    _session(ctx, job, status=JobStatus.RUNNING, progress=0)
    notices.publish(ctx.redis, notices.STARTED, job_id=job.id, session_id=job.session_id, kind=job.kind)


def progress(ctx: Context, job: Job, percent: int) -> None:
    """The model advanced (the caller throttles: about once a second)."""
    job.progress = percent
    with ctx.redis.pipeline() as p:
        ctx.jobs.update(job.id, pipe=p, progress=percent)
        notices.publish(p, notices.PROGRESS, job_id=job.id, session_id=job.session_id, progress=percent)
        p.execute()
    _session(ctx, job, progress=percent)


def complete(ctx: Context, job: Job, done: Completion, claimed: Claimed | None) -> None:
    """The job has a result. ``claimed=None`` leaves the stream entry pending: the
    caller acknowledges it with :func:`acknowledge` once the result is stored (so a
    worker that dies before that has its result stored by recovery)."""
    if _ended_elsewhere(ctx, job, claimed):
        return
    now = time.time()
    job.status, job.output_blob, job.finished, job.progress = JobStatus.COMPLETED, done.blob_id, now, 100
    ctx.jobs.update(job.id, status=job.status, output_blob=done.blob_id, finished=now, progress=100, **done.record)
    ended = {"status": "idle", "progress": 100, "error": "", "error_code": "", **done.session}
    if done.version is not None and job.session_id:
        # The new version and the session's pointer move together (a stale job adds nothing).
        ctx.sessions.append_version(job.session_id, done.version, job_id=job.id, **ended)
    else:
        _session(ctx, job, **ended)
    if job.started:
        ctx.queue.record_duration(now - job.started)
    if claimed is not None:
        ctx.queue.ack(claimed)
    else:
        ctx.queue.release(job.id)  # no longer running; the entry stays until acknowledge()
    notices.publish(ctx.redis, notices.COMPLETED, job_id=job.id, session_id=job.session_id, kind=job.kind,
                    blob_id=done.blob_id, **done.notice)
    if done.version is not None and job.session_id:
        prune_history(ctx.blobs, ctx.sessions, job.session_id)


def acknowledge(ctx: Context, claimed: Claimed) -> None:
    """A completed job's result is stored: its stream entry and its hand-off can go."""
    ctx.queue.ack(claimed)
    handoff.drop(ctx.redis_bytes, claimed.job_id)


def result_not_stored(ctx: Context, job: Job, claimed: Claimed, error: G4LError) -> None:
    """A completed job whose result the audio store never took (the worker gave up after
    ``G4L_RESULT_STORE_MAX_S``, or recovery found its hand-off gone): it ends failed with
    ``error`` instead of staying pending forever, and its stream entry and hand-off go.
    The session's history takes the version back (the session returns to the one it was
    made from); its error fields say why the result is not kept."""
    if job.session_id and job.output_blob:
        for record in ctx.sessions.history(job.session_id).versions.values():
            if record.job_id == job.id and record.blob == job.output_blob:
                ctx.sessions.withdraw_version(job.session_id, record.version)
    job.status, job.finished, job.output_blob = JobStatus.FAILED, time.time(), None
    job.error, job.error_code = error.message, error.code
    ctx.jobs.update(job.id, status=job.status, finished=job.finished, output_blob="", error=error.message,
                    error_code=error.code)
    _session(ctx, job, error=error.message, error_code=error.code)
    acknowledge(ctx, claimed)
    notices.publish(ctx.redis, notices.FAILED, job_id=job.id, session_id=job.session_id, kind=job.kind,
                    message=error.message, code=error.code)
    log.error("result not stored; job failed", job_id=job.id, session_id=job.session_id, code=error.code,
              error=error.message)


def fail(ctx: Context, job: Job, error: G4LError, claimed: Claimed | None = None) -> None:
    """The job ended without a result; the session keeps what it had."""
    if _ended_elsewhere(ctx, job, claimed):
        return
    job.status, job.finished = JobStatus.FAILED, time.time()
    job.error, job.error_code = error.message, error.code
    ctx.jobs.update(job.id, status=job.status, finished=job.finished, error=error.message, error_code=error.code)
    _session(ctx, job, status="idle", progress=0, error=error.message, error_code=error.code)
    _end(ctx, job, claimed)
    notices.publish(ctx.redis, notices.FAILED, job_id=job.id, session_id=job.session_id, kind=job.kind,
                    message=error.message, code=error.code)
    log.warning("job failed", job_id=job.id, session_id=job.session_id, code=error.code, error=error.message)


def cancel(ctx: Context, job: Job, claimed: Claimed | None = None) -> None:
    """The job stopped on request (or was dropped before it ran)."""
    if _ended_elsewhere(ctx, job, claimed):
        return
    job.status, job.finished = JobStatus.CANCELED, time.time()
    ctx.jobs.update(job.id, status=job.status, finished=job.finished)
    _session(ctx, job, status="idle", progress=0)
    _end(ctx, job, claimed)
    notices.publish(ctx.redis, notices.CANCELED, job_id=job.id, session_id=job.session_id, kind=job.kind)
    log.info("job canceled", job_id=job.id, session_id=job.session_id)


def request_cancel(ctx: Context, job_id: str) -> Job | None:
    """Stop a job: dropped at once if still queued, stopped between model steps if
    running (its worker sees the flag). Returns the job as it is now."""
    ctx.jobs.flag_cancel(job_id)
    job = ctx.jobs.get(job_id)
    if job is not None and job.status is JobStatus.QUEUED and ctx.queue.remove_waiting(job_id):
        cancel(ctx, job)
    return job


def requeue(ctx: Context, job: Job, claimed: Claimed, *, attempt_used: bool = True) -> None:
    """Put a started job back at the front of its queue.

    :param attempt_used: False for a job that gave way (a background job preempted by an
        interactive one): its attempt does not count against ``G4L_JOB_MAX_ATTEMPTS``.
    """
    job.status, job.worker, job.started, job.progress = JobStatus.QUEUED, None, None, 0
    if not attempt_used:
        job.attempts = max(0, job.attempts - 1)
    ctx.queue.replace(claimed, job, front=True)
    _session(ctx, job, status=JobStatus.QUEUED, progress=0)
    notices.publish(ctx.redis, notices.QUEUE_CHANGED, job_id=job.id, session_id=job.session_id)


def _ended_elsewhere(ctx: Context, job: Job, claimed: Claimed | None) -> bool:
    """Whether another process already ended the job (a failed input upload, say): it
    keeps that outcome, and this one only lets go of the stream entry."""
    current = ctx.jobs.get(job.id)
    if current is None or not current.status.final:
        return False
    if claimed is not None:
        ctx.queue.ack(claimed)
    return True


def _end(ctx: Context, job: Job, claimed: Claimed | None) -> None:
    if claimed is not None:
        ctx.queue.ack(claimed)
    else:
        ctx.queue.release(job.id)
        ctx.queue.remove_waiting(job.id)


def _session(ctx: Context, job: Job, **fields: Any) -> None:
    """The session's view of its current job (a stale job never overwrites a newer one)."""
    if job.session_id:
        ctx.sessions.update_if_job(job.session_id, job.id, **fields)
