"""Job state transitions, each applied to the job record, its session and the notices
together, so a job is never "in progress" in one place and finished in another."""

from __future__ import annotations

import json
import time

from g4l import keys
from g4l.context import Context
from g4l.errors import G4LError, GenerationFailed
from g4l.jobs import handoff, notices
from g4l.jobs.queue import Claimed
from g4l.jobs.records import Job
from g4l.log import get_logger

log = get_logger(__name__)

#: How long recovery waits for a spliced result's input in GridFS (it runs in a worker's
#: job loop; the input is normally stored long before).
ORPHAN_INPUT_WAIT_S = 2.0


def started(ctx: Context, job: Job, worker: str) -> None:
    """The worker took the job."""
    job.status, job.worker, job.started = "running", worker, time.time()
    job.attempts += 1
    ctx.jobs.update(job.id, status="running", worker=worker, started=job.started, attempts=job.attempts,
                    progress=0)
    ctx.sessions.update_if_job(job.session_id, job.id, status="running", progress=0)
    notices.publish(ctx.redis, notices.STARTED, job_id=job.id, session_id=job.session_id, kind=job.kind)


def progressed(ctx: Context, job: Job, percent: int) -> None:
    """Throttled by the caller (about once a second)."""
    job.progress = percent
    with ctx.redis.pipeline() as p:
        p.hset(keys.job(job.id), "progress", percent)
        notices.publish(p, notices.PROGRESS, job_id=job.id, session_id=job.session_id, progress=percent)
        p.execute()
    ctx.sessions.update_if_job(job.session_id, job.id, progress=percent)


def failed(ctx: Context, job: Job, error: G4LError) -> None:
    """The job ended without a result; the session keeps what it had."""
    job.status, job.finished = "failed", time.time()
    job.error, job.error_code = error.message, error.code
    ctx.jobs.update(job.id, status="failed", finished=job.finished, error=error.message, error_code=error.code)
    ctx.sessions.update_if_job(job.session_id, job.id, status="idle", progress=0, error=error.message,
                               error_code=error.code)
    notices.publish(ctx.redis, notices.FAILED, job_id=job.id, session_id=job.session_id, kind=job.kind,
                    message=error.message, code=error.code)
    log.warning("job failed", job_id=job.id, session_id=job.session_id, code=error.code, error=error.message)


def canceled(ctx: Context, job: Job) -> None:
    job.status, job.finished = "canceled", time.time()
    ctx.jobs.update(job.id, status="canceled", finished=job.finished)
    ctx.sessions.update_if_job(job.session_id, job.id, status="idle", progress=0)
    notices.publish(ctx.redis, notices.CANCELED, job_id=job.id, session_id=job.session_id, kind=job.kind)
    log.info("job canceled", job_id=job.id, session_id=job.session_id)


def alive_workers(ctx: Context) -> dict[str, str]:
    """Name -> heartbeat JSON of every worker whose heartbeat has not expired."""
    names = sorted(ctx.redis.smembers(keys.WORKERS))
    if not names:
        return {}
    beats = ctx.redis.mget([keys.worker(n) for n in names])
    dead = [n for n, b in zip(names, beats) if b is None]
    if dead:
        ctx.redis.srem(keys.WORKERS, *dead)
    return {n: b for n, b in zip(names, beats) if b is not None}


def recover_orphans(ctx: Context) -> int:
    """Give the jobs of dead workers another attempt, or fail them clearly. Returns how many."""
    alive = set(alive_workers(ctx))
    min_idle_ms = int(ctx.settings.worker_dead_after_s * 1000)
    handled = 0
    for claimed, consumer in ctx.queue.orphans(alive, min_idle_ms):
        handled += 1
        try:
            _recover_one(ctx, claimed, consumer)
        except Exception:  # left pending for the next pass; the other orphans go on
            log.exception("recovering a job failed", job_id=claimed.job_id, dead_worker=consumer)
    return handled


def _store_orphan_result(ctx: Context, job: Job) -> None:
    """A worker died after handing its result to the web nodes but before GridFS had it:
    store it from the Redis copy so the session's pointer is not left dangling."""
    if not job.output_blob or ctx.blobs.exists(job.output_blob):
        return
    try:
        data = handoff.read_wav(ctx, job.id, input_wait_s=ORPHAN_INPUT_WAIT_S)
    except Exception:  # unreadable, or spliced with its input gone: logged as lost below
        log.exception("reading a dead worker's result failed", job_id=job.id, session_id=job.session_id)
        data = None
    meta = ctx.redis.hget(keys.job(job.id), "output_meta")
    if data is None or not meta:
        log.error("result lost with its worker", job_id=job.id, session_id=job.session_id)
        return
    ctx.blobs.put(data, blob_id=job.output_blob, **json.loads(meta))
    log.warning("stored the result of a dead worker", job_id=job.id, session_id=job.session_id)


def _recover_one(ctx: Context, claimed: Claimed, consumer: str) -> None:
    job = ctx.jobs.get(claimed.job_id)
    if job is not None and job.status == "completed":
        _store_orphan_result(ctx, job)
    if job is None or job.status in ("completed", "failed", "canceled"):
        ctx.queue.ack(claimed)
        return
    if ctx.jobs.cancel_requested(job.id):
        ctx.queue.ack(claimed)
        canceled(ctx, job)
        return
    bound = log.bind(job_id=job.id, session_id=job.session_id, dead_worker=consumer)
    if job.attempts >= ctx.settings.job_max_attempts:
        ctx.queue.ack(claimed)
        failed(ctx, job, GenerationFailed(
            f"the worker running this generation stopped ({job.attempts} attempt(s)); please try again",
            session_id=job.session_id))
        return
    bound.warning("recovering job of a dead worker", attempts=job.attempts)
    ctx.sessions.update_if_job(job.session_id, job.id, status="queued", progress=0)
    ctx.queue.requeue(claimed, job)
    notices.publish(ctx.redis, notices.QUEUE_CHANGED, job_id=job.id, session_id=job.session_id)
