"""The worker: one class that owns a job's claim -> run -> finish cycle.

:meth:`Worker.step` takes the next job from the queue (interactive first), hands it to its
kind (:mod:`g4l.worker.kinds`), and ends it through :mod:`g4l.jobs.lifecycle` whatever
happens: completed (the result handed to the web nodes and/or stored), canceled, failed
with a clear error, or put back on the queue (a background job giving way). Between jobs
it runs maintenance: recovery of dead workers' jobs and the retention sweep.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

import pymongo.errors
import redis
from structlog.stdlib import BoundLogger

from g4l import keys
from g4l.context import Context
from g4l.engine.base import Cancelled
from g4l.engine.cache import ModelCache
from g4l.errors import G4LError, GenerationFailed, StoreUnavailable
from g4l.jobs import handoff, lifecycle, recovery
from g4l.jobs.lifecycle import Completion
from g4l.jobs.queue import Claimed
from g4l.jobs.records import Job
from g4l.log import get_logger
from g4l.store import redis_wait, retention
from g4l.worker import kinds
from g4l.worker.heartbeat import Heartbeat
from g4l.worker.progress import Preempted, ProgressReporter
from g4l.worker.result_writer import PendingWrite, ResultWriter, store_result

log = get_logger(__name__)

MAINTENANCE_EVERY_S = 5.0
T = TypeVar("T")


class Worker:
    """Takes jobs until :meth:`stop`.

    :param name: this worker's consumer name (also its heartbeat's).
    :param heartbeat: renewed by its own thread; told at once when the job in hand changes.
    :param writer: stores results that were delivered first (``None``: store inline).
    """

    def __init__(self, ctx: Context, cache: ModelCache, name: str, heartbeat: Heartbeat | None = None,
                 writer: ResultWriter | None = None) -> None:
        self.ctx = ctx
        self.cache = cache
        self.name = name
        self.heartbeat = heartbeat
        self.writer = writer
        #: The job in hand (what the heartbeat reports).
        self.current: str | None = None
        self._stopping = False
        self._last_maintenance = 0.0

    def stop(self) -> None:
        """Finish the job in hand, then leave :meth:`run_forever`."""
        self._stopping = True

    def run_forever(self) -> None:
        """Take jobs until :meth:`stop`; while Redis is away, wait for it (with backoff)
        instead of crashing into a restart loop."""
        outage = 0
        while not self._stopping:
            try:
                if time.monotonic() - self._last_maintenance > MAINTENANCE_EVERY_S:
                    self._last_maintenance = time.monotonic()
                    self.maintain()
                self.step()
                if outage:
                    log.info("redis is back", worker=self.name)
                outage = 0
            except redis_wait.UNAVAILABLE as exc:
                if outage == 0:
                    log.warning("redis unavailable; worker waiting", worker=self.name, error=str(exc)[:200])
                time.sleep(redis_wait.backoff(outage))
                outage += 1

    def maintain(self) -> None:
        """Recover dead workers' jobs; sweep old audio when due (any worker may)."""
        try:
            recovery.recover_orphans(self.ctx)
            c = self.ctx
            retention.sweep_if_due(c.redis, c.blobs, c.sessions, c.settings.retention_seconds)
        except redis_wait.UNAVAILABLE:
            raise
        except Exception:
            log.exception("maintenance failed")

    # ------------------------------------------------------------ claim
    def step(self, block_ms: int = 1000) -> bool:
        """Claim and run one job. Returns whether there was one."""
        claimed = self.ctx.queue.claim(self.name, block_ms=block_ms)
        if claimed is None:
            return False
        # Once claimed, the job is this worker's until it ends: a Redis outage from here on
        # is waited out (G4L_REDIS_WAIT_S), so the entry is never left pending on a live worker.
        job = self._redis(lambda: self.ctx.jobs.get(claimed.job_id), claimed.job_id)
        if job is None or job.status.final:
            self._redis(lambda: lifecycle.acknowledge(self.ctx, claimed), claimed.job_id)  # ended while it waited
            return True
        if self._redis(lambda: self.ctx.jobs.cancel_requested(job.id), job.id):
            self._redis(lambda: lifecycle.cancel(self.ctx, job, claimed), job.id)
            return True
        # Started (its attempt counted) before the heartbeat names it: whoever sees this
        # worker holding the job sees an attempt in progress.
        self._redis(lambda: lifecycle.start(self.ctx, job, self.name, claimed), job.id)
        self._hold(job.id)
        try:
            self.run(job, claimed)
        finally:
            self._hold(None)
        return True

    def _redis(self, fn: Callable[[], T], job_id: str) -> T:
        """``fn()``, waiting out a Redis outage for up to ``G4L_REDIS_WAIT_S``."""
        return redis_wait.retry(fn, wait_s=self.ctx.settings.redis_wait_s, what="a job's bookkeeping", job_id=job_id)

    def _hold(self, job_id: str | None) -> None:
        self.current = job_id
        if self.heartbeat is not None:
            self.heartbeat.refresh()  # health and recovery see the job now, not at the next tick

    # ------------------------------------------------------------ run and finish
    def run(self, job: Job, claimed: Claimed) -> None:
        """Run a started job and end it, whatever happens."""
        bound = log.bind(job_id=job.id, session_id=job.session_id, kind=job.kind, model=job.model)
        kind = kinds.get(job.kind)
        if job.stale or kind is None:
            text = ("this request was queued by an earlier version of the server; please send it again" if job.stale
                    else f"this worker cannot run '{job.kind}' jobs")
            self._redis(lambda: lifecycle.fail(self.ctx, job, GenerationFailed(text, session_id=job.session_id or None),
                                               claimed), job.id)
            return
        run = None
        try:
            engine = self.cache.get(job.model)
            expected = int(job.spec.new_seconds * float(getattr(engine, "frame_rate", 0.0)))
            run = kinds.Run(self.ctx, job, engine, self.ctx.blobs.new_id(), ProgressReporter(self.ctx, job, expected))
            outcome = kind.run(run)
            if self.ctx.jobs.cancel_requested(job.id):  # canceled after the last model step: keep nothing
                raise Cancelled()
            # A finished generation is not thrown away for a Redis blip: hand-off and
            # completion are retried until Redis is back (G4L_REDIS_WAIT_S at most).
            finished = run
            self._redis(lambda: self._finish(kind, job, claimed, finished, outcome, bound), job.id)
        except Cancelled:
            self._redis(lambda: lifecycle.cancel(self.ctx, job, claimed), job.id)
        except Preempted:
            try:
                lifecycle.requeue(self.ctx, job, claimed, attempt_used=False)
                bound.info("background job gave way to an interactive one")
            except Exception:
                bound.exception("putting a background job back failed")
                lifecycle.fail(self.ctx, job, GenerationFailed("the generation was interrupted; it will be retried",
                                                               session_id=job.session_id or None), claimed)
        except G4LError as exc:
            exc.session_id = job.session_id or None
            refused = exc
            self._redis(lambda: lifecycle.fail(self.ctx, job, refused, claimed), job.id)
        except redis_wait.UNAVAILABLE:
            # Redis went away mid-job for longer than the wait: the job runs again from the
            # queue once Redis is back (its attempt is not counted: the worker did not fail).
            bound.warning("redis unavailable during the job; putting it back")
            self._redis(lambda: lifecycle.requeue(self.ctx, job, claimed, attempt_used=False), job.id)
        except Exception as exc:  # a model or storage fault: report it, keep the worker alive
            failure: G4LError
            if isinstance(exc, pymongo.errors.PyMongoError):
                bound.warning("audio store unavailable during the job", error=str(exc)[:200])
                failure = StoreUnavailable("the audio store did not answer in time; nothing was changed, "
                                           "please send the request again", session_id=job.session_id or None)
            else:
                bound.exception("job crashed")
                failure = GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}"[:300],
                                           session_id=job.session_id or None)
            self._redis(lambda: lifecycle.fail(self.ctx, job, failure, claimed), job.id)
        finally:
            if run is not None:
                run.close()
            try:
                self.ctx.redis.delete(keys.prompt(job.id))
            except redis.RedisError:
                pass  # it expires by itself

    def _finish(self, kind: kinds.JobKind, job: Job, claimed: Claimed, run: kinds.Run, outcome: kinds.Outcome,
                bound: BoundLogger) -> None:
        """Hand the result over and complete the job: stored first, or (a kind whose client
        waits on a socket) handed to the web nodes first and stored by the writer."""
        record = {"model_seconds": round(run.model_seconds, 3), **outcome.record}
        done = Completion(run.blob_id, session=outcome.session, record=record, notice=outcome.notice)
        if not kind.deliver_first:
            stored = time.perf_counter()
            self.ctx.blobs.put(outcome.wav(), blob_id=run.blob_id, **outcome.meta)
            done.record["store_seconds"] = round(time.perf_counter() - stored, 3)
            lifecycle.complete(self.ctx, job, done, claimed)
            bound.info("job completed", **done.record)
            return
        # The client gets the result from a short-lived Redis key while GridFS stores it
        # (the slowest step for big files). The stream entry is acknowledged only after
        # the GridFS write, so if this worker dies in between, recovery stores the key.
        build_wav: Callable[[], bytes] = outcome.wav  # a splice then runs in the writer's thread
        if outcome.splice is not None and outcome.new_wav is not None and job.hold_input:
            handoff.put_spliced(self.ctx.redis_bytes, job.id, outcome.new_wav, outcome.splice)
        else:
            whole = outcome.wav()
            handoff.put_whole(self.ctx.redis_bytes, job.id, whole)
            build_wav = lambda: whole  # noqa: E731  (built once)
        self.ctx.jobs.update(job.id, output_meta=json.dumps(outcome.meta))
        done.record["post_seconds"] = round(time.perf_counter() - run.model_done, 3)
        write = PendingWrite(job, claimed, run.blob_id, build_wav, outcome.meta)
        lifecycle.complete(self.ctx, job, done, None)  # acknowledged once stored
        if self.writer is not None:
            self.writer.submit(write)
        else:
            store_result(self.ctx, write)
        bound.info("job completed", **done.record)
