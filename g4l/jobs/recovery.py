"""Crash recovery: the jobs of workers that died go back on the queue, or fail clearly.

A worker renews a heartbeat key (:mod:`g4l.worker.heartbeat`); once it expires, any
process running maintenance claims the dead worker's pending stream entries away from it
(XCLAIM: exactly one recoverer gets each) and gives each job another attempt, or fails
it once ``G4L_JOB_MAX_ATTEMPTS`` are used. A job that had completed but whose result had
not reached GridFS yet is stored from its Redis hand-off.
"""

from __future__ import annotations

import json
import time

import pymongo

from g4l import keys
from g4l.context import Context
from g4l.errors import GenerationFailed, StoreUnavailable
from g4l.jobs import delivery, handoff, lifecycle
from g4l.jobs.queue import Claimed
from g4l.jobs.records import Job, JobStatus
from g4l.log import get_logger
from g4l.store import heartbeats, redis_wait

log = get_logger(__name__)

#: How long recovery waits for a spliced result's input in GridFS (it runs in a worker's
#: job loop; the input is normally stored long before).
ORPHAN_INPUT_WAIT_S = 2.0
#: The longest storing one orphaned result may take in one pass (then the next pass retries).
ORPHAN_STORE_TIMEOUT_S = 60.0


def alive_workers(ctx: Context) -> dict[str, str]:
    """Name -> heartbeat JSON of every worker whose heartbeat has not expired."""
    return heartbeats.alive(ctx.redis, keys.WORKERS, keys.worker)


def _redis_just_restarted(ctx: Context) -> bool:
    """Whether Redis came up less than a worker-expiry ago. Every heartbeat key comes back
    expired from a restart (their TTLs ran out during the outage), but live workers beat
    again within a heartbeat: until then nobody is taken for dead."""
    try:
        uptime = int(ctx.redis.info("server").get("uptime_in_seconds", 10**9))
    except Exception:  # not Redis' INFO (a proxy): no restart detection
        return False
    return uptime < ctx.settings.worker_dead_after_s


def recover_orphans(ctx: Context) -> int:
    """Give the jobs of dead workers another attempt, or fail them clearly. Returns how many."""
    if _redis_just_restarted(ctx):
        return 0
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


def _store_orphan_result(ctx: Context, job: Job, claimed: Claimed) -> bool:
    """A worker died after handing its result to the web nodes but before GridFS had it:
    store it from the Redis copy so the session's pointer is not left dangling. Returns
    False when the job was failed instead (its copy is gone, or the store refused it for
    ``G4L_RESULT_STORE_MAX_S`` since the job finished). A store that refuses it sooner
    raises: the entry stays pending for the next pass, the copy kept readable."""
    try:
        with pymongo.timeout(ORPHAN_STORE_TIMEOUT_S):  # a paused store must not hold maintenance
            if not job.output_blob or ctx.blobs.exists(job.output_blob):
                return True
            data = delivery.read_result(ctx, job.id, None, input_wait_s=ORPHAN_INPUT_WAIT_S)
            meta = ctx.redis.hget(keys.job(job.id), "output_meta")
            if data is None or not meta:
                lifecycle.result_not_stored(ctx, job, claimed, StoreUnavailable(
                    "the worker that made this result stopped before the audio store had it; it was not kept, "
                    "please send the request again", session_id=job.session_id or None))
                return False
            ctx.blobs.put(bytes(data), blob_id=job.output_blob, **json.loads(meta))
    except redis_wait.UNAVAILABLE:
        raise
    except Exception as exc:
        if time.time() - (job.finished or 0.0) < ctx.settings.result_store_max_s:
            handoff.keep(ctx.redis_bytes, job.id)
            raise
        lifecycle.result_not_stored(ctx, job, claimed, StoreUnavailable(
            f"the audio store did not take this result within {ctx.settings.result_store_max_s:g} s; it was not "
            "kept, please send the request again", session_id=job.session_id or None))
        log.warning("gave up storing the result of a dead worker", job_id=job.id, error=str(exc)[:200])
        return False
    log.warning("stored the result of a dead worker", job_id=job.id, session_id=job.session_id)
    return True


def _recover_one(ctx: Context, claimed: Claimed, consumer: str) -> None:
    job = ctx.jobs.get(claimed.job_id)
    if job is not None and job.status is JobStatus.COMPLETED and not _store_orphan_result(ctx, job, claimed):
        return  # failed clearly, its entry acknowledged
    if job is None or job.status.final:
        lifecycle.acknowledge(ctx, claimed)
        return
    if ctx.jobs.cancel_requested(job.id):
        lifecycle.cancel(ctx, job, claimed)
        return
    if job.attempts >= ctx.settings.job_max_attempts:
        lifecycle.fail(ctx, job, GenerationFailed(
            f"the worker running this generation stopped ({job.attempts} attempt(s)); please try again",
            session_id=job.session_id), claimed)
        return
    log.warning("recovering job of a dead worker", job_id=job.id, session_id=job.session_id,
                dead_worker=consumer, attempts=job.attempts)
    lifecycle.requeue(ctx, job, claimed)
