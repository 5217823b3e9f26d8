"""The worker: one class that owns a job's claim -> run -> finish cycle.

:meth:`Worker.step` takes the next job from the queue (interactive first), hands it to its
kind (:mod:`g4l.worker.kinds`), and ends it through :mod:`g4l.jobs.lifecycle` whatever
happens: completed (the result handed to the web nodes and/or stored), canceled, failed
with a clear error, or put back on the queue (a background job giving way). Between
claims it runs maintenance: recovery of dead workers' jobs and the retention sweep.

A worker holds up to ``G4L_MAX_BATCH`` jobs at once (continuous batching). Each claimed
job runs the same :meth:`Worker.run` in its own thread; their model calls meet in one
decoding loop per model (:class:`~g4l.engine.batched_engine.BatchedEngine`), so they share
forward passes, and each still has its own progress, cancel and ending. With a batch of 1
the job runs in the claiming thread on the stock engine, as before batching existed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import pymongo.errors
import redis
from structlog.stdlib import BoundLogger

from g4l import keys
from g4l.context import Context
from g4l.engine.base import AudioCallback, Cancelled, Engine
from g4l.engine.cache import ModelCache
from g4l.engine.families import FAMILIES, MUSICGEN, STABLE_AUDIO
from g4l.errors import G4LError, GenerationFailed, StoreUnavailable
from g4l.jobs import handoff, lifecycle, partials, recovery
from g4l.jobs.kinds import KindName
from g4l.jobs.lifecycle import Completion
from g4l.jobs.queue import Claimed
from g4l.jobs.records import Job, Priority
from g4l.log import get_logger
from g4l.store import redis_wait, retention
from g4l.worker import kinds
from g4l.worker.heartbeat import Heartbeat
from g4l.worker.partial_audio import PartialPublisher
from g4l.worker.progress import Preempted, ProgressReporter
from g4l.worker.result_writer import PendingWrite, ResultWriter, store_result

if TYPE_CHECKING:
    from g4l.engine.batched_musicgen import BatchedMusicGen
    from g4l.engine.microbatch import MicroBatcher

log = get_logger(__name__)

MAINTENANCE_EVERY_S = 5.0
T = TypeVar("T")


class Worker:
    """Takes jobs until :meth:`stop`.

    :param name: this worker's consumer name (also its heartbeat's).
    :param heartbeat: renewed by its own thread; told at once when the job in hand changes.
    :param writer: stores results that were delivered first (``None``: store inline).
    :param max_batch: most jobs held at once (default ``G4L_MAX_BATCH``; 1: one at a time).
    :param kv_budget_bytes: most bytes of KV cache per model's decoding loop (default
        ``G4L_KV_BUDGET_MB``; ``None`` or 0: no limit).
    :param runners: the kinds this worker runs, by name (default: every shipped one,
        :data:`g4l.worker.kinds.RUNNERS`); a job of another kind fails clearly.
    :param families: the model families whose jobs it takes (default: every family).
    """

    def __init__(self, ctx: Context, cache: ModelCache, name: str, heartbeat: Heartbeat | None = None,
                 writer: ResultWriter | None = None, max_batch: int | None = None,
                 kv_budget_bytes: int | None = None, runners: Mapping[KindName, kinds.JobKind] | None = None,
                 families: Iterable[str] | None = None) -> None:
        self.ctx = ctx
        self.runners = dict(kinds.RUNNERS if runners is None else runners)
        self.cache = cache
        self.name = name
        self.families = list(FAMILIES) if families is None else [f for f in FAMILIES if f in set(families)]
        self.heartbeat = heartbeat
        self.writer = writer
        self.max_batch = max(1, max_batch or ctx.settings.max_batch)
        self.kv_budget_bytes = kv_budget_bytes or ctx.settings.kv_budget_mb * 2**20 or None
        #: Job id -> its thread (``None``: running in the claiming thread), in claim order.
        self._held: dict[str, threading.Thread | None] = {}
        self._slots = threading.Condition()  # guards _held and _giving_way; notified when a job ends
        self._giving_way = False
        #: Model id -> its shared decoding loop (batching workers only).
        self._loops: dict[str, BatchedMusicGen] = {}
        #: Model id -> its micro-batcher (text-to-audio families, batching workers only).
        self._batchers: dict[str, MicroBatcher[Any, Any]] = {}
        self._loops_lock = threading.Lock()
        self._stopping = False
        self._last_maintenance = 0.0

    @property
    def current(self) -> str | None:
        """The first job in hand (``None``: idle); the heartbeat's ``job_id``."""
        held = self.held()
        return held[0] if held else None

    def held(self) -> list[str]:
        """Every job in hand, in claim order (the heartbeat's ``job_ids``)."""
        with self._slots:
            return list(self._held)

    def stop(self) -> None:
        """Finish the jobs in hand, then leave :meth:`run_forever`."""
        self._stopping = True

    def run_forever(self) -> None:
        """Take jobs until :meth:`stop`; while Redis is away, wait for it (with backoff)
        instead of crashing into a restart loop. Returns once the jobs in hand ended."""
        outage = 0
        while not self._stopping:
            try:
                if time.monotonic() - self._last_maintenance > MAINTENANCE_EVERY_S:
                    self._last_maintenance = time.monotonic()
                    self.maintain()
                if not self._wait_for_slot(1.0):
                    continue  # full: maintenance still runs while the batch decodes
                self.step(threaded=self.max_batch > 1)
                if outage:
                    log.info("redis is back", worker=self.name)
                outage = 0
            except redis_wait.UNAVAILABLE as exc:
                if outage == 0:
                    log.warning("redis unavailable; worker waiting", worker=self.name, error=str(exc)[:200])
                time.sleep(redis_wait.backoff(outage))
                outage += 1
        self.drain()

    def drain(self) -> None:
        """Wait for the jobs in hand to end, then stop the decoding loops."""
        with self._slots:
            threads = [t for t in self._held.values() if t is not None]
        for thread in threads:
            thread.join()
        with self._loops_lock:
            for loop in self._loops.values():
                loop.stop()
            self._loops.clear()
            for batcher in self._batchers.values():
                batcher.stop()
            self._batchers.clear()

    def _wait_for_slot(self, timeout: float) -> bool:
        """Whether a job may be claimed now (waits up to ``timeout`` for one to end)."""
        with self._slots:
            return self._slots.wait_for(lambda: len(self._held) < self.max_batch, timeout)

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
    def step(self, block_ms: int = 1000, threaded: bool = False) -> bool:
        """Claim one job and run it, here or (``threaded``: how a batching worker's
        :meth:`run_forever` calls it) in its own thread, so the next claim can join the
        batch. Returns whether there was one."""
        claimed = self.ctx.queue.claim(self.name, block_ms=block_ms, families=self.families)
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
        if not threaded:
            self._hold(job.id, None)
            try:
                self.run(job, claimed)  # a Redis outage past the wait goes up to run_forever
            finally:
                self._release(job.id)
        else:
            thread = threading.Thread(target=self._run_held, args=(job, claimed), name=f"job-{job.id[:8]}",
                                      daemon=True)
            self._hold(job.id, thread)
            thread.start()
        return True

    def _run_held(self, job: Job, claimed: Claimed) -> None:
        """A job's thread (batching worker)."""
        try:
            self.run(job, claimed)
        except Exception:
            # Only a Redis outage longer than G4L_REDIS_WAIT_S gets here; the entry stays
            # pending on this worker (as when the single-job loop gave up on it).
            log.exception("job bookkeeping gave up", job_id=job.id)
        finally:
            self._release(job.id)

    def _redis(self, fn: Callable[[], T], job_id: str) -> T:
        """``fn()``, waiting out a Redis outage for up to ``G4L_REDIS_WAIT_S``."""
        return redis_wait.retry(fn, wait_s=self.ctx.settings.redis_wait_s, what="a job's bookkeeping", job_id=job_id)

    def _hold(self, job_id: str, thread: threading.Thread | None) -> None:
        with self._slots:
            self._held[job_id] = thread
        if self.heartbeat is not None:
            self.heartbeat.refresh()  # health and recovery see the job now, not at the next tick

    def _release(self, job_id: str) -> None:
        with self._slots:
            self._held.pop(job_id, None)
            self._giving_way = False  # a slot is free: the waiting interactive job fits now
            self._slots.notify_all()
        if self.heartbeat is not None:
            self.heartbeat.refresh()

    def _may_give_way(self) -> bool:
        """Whether a background job should step aside for a waiting interactive one: only
        when no slot is free (else this worker claims the interactive job itself) and only
        one job at a time (one freed slot is enough)."""
        with self._slots:
            if len(self._held) < self.max_batch or self._giving_way:
                return False
            self._giving_way = True
            return True

    # ------------------------------------------------------------ engines
    def engine_for(self, job: Job, on_audio: AudioCallback | None = None) -> Engine:
        """The engine a job runs on: the stock one with a batch of 1 (and for the families
        that are not MusicGen: their engines batch on their own), else its model's shared
        decoding loop (started on first use), at the job's priority; ``on_audio`` streams
        its audio while it is generated (batching workers only)."""
        base = self.cache.get(job.model)
        if self.max_batch > 1 and job.family == STABLE_AUDIO.name:
            return self._text_batcher(base)
        if self.max_batch == 1 or job.family != MUSICGEN.name:
            return base
        from g4l.engine.batched_engine import BACKGROUND, INTERACTIVE, BatchedEngine  # torch: workers only
        from g4l.engine.batched_musicgen import BatchedMusicGen

        with self._loops_lock:
            loop = self._loops.get(base.model_id)
            if loop is None:
                loop = self._loops[base.model_id] = BatchedMusicGen(
                    base.model, max_batch=self.max_batch, kv_budget_bytes=self.kv_budget_bytes,
                    decode_slots=self.ctx.settings.decode_threads or None)
                loop.start()
        return BatchedEngine(base, loop, INTERACTIVE if job.priority is Priority.INTERACTIVE else BACKGROUND,
                             on_audio=on_audio, chunk_s=self.ctx.settings.stream_chunk_s)

    def _text_batcher(self, base: Any) -> Any:
        """``base`` (a text-to-audio engine) behind its model's micro-batcher (started on
        first use): the jobs in hand that ask it at once share one sampler run."""
        from g4l.engine.microbatch import BatchedTextToAudio, MicroBatcher

        with self._loops_lock:
            batcher = self._batchers.get(base.model_id)
            if batcher is None:
                from g4l.engine.stable_audio import batch_key  # torch: workers only

                batcher = self._batchers[base.model_id] = MicroBatcher(
                    base.text_to_audio_batch, self.max_batch, name=f"batch-{base.model_id}"[:40], key=batch_key)
        return BatchedTextToAudio(base, batcher)

    def _streamed(self, job: Job) -> AudioCallback | None:
        """A publisher of the job's audio while it runs, when someone can hear it (and the
        engine can stream: the batched one); ``None`` costs the job nothing."""
        if self.max_batch == 1 or self.ctx.settings.stream_chunk_s <= 0 or job.family != MUSICGEN.name:
            return None
        try:
            return PartialPublisher(self.ctx, job) if partials.wanted(self.ctx.redis, job) else None
        except redis.RedisError:  # streaming is a bonus: the job runs unstreamed
            return None

    # ------------------------------------------------------------ run and finish
    def run(self, job: Job, claimed: Claimed) -> None:
        """Run a started job and end it, whatever happens."""
        bound = log.bind(job_id=job.id, session_id=job.session_id, kind=job.kind, model=job.model)
        kind = self.runners.get(job.kind)
        if job.stale or kind is None:
            text = (f"this worker cannot run '{job.kind}' jobs" if kind is None
                    else "this request was queued by an earlier version of the server; please send it again")
            self._redis(lambda: lifecycle.fail(self.ctx, job, GenerationFailed(text, session_id=job.session_id or None),
                                               claimed), job.id)
            return
        run = None
        try:
            engine = self.engine_for(job, self._streamed(job))
            expected = int(job.spec.new_seconds * float(getattr(engine, "frame_rate", 0.0)))
            progress = ProgressReporter(self.ctx, job, expected, may_give_way=self._may_give_way)
            run = kinds.Run(self.ctx, job, engine, self.ctx.blobs.new_id(), progress)
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
        done = Completion(run.blob_id, session=outcome.session, record=record, notice=outcome.notice,
                          version=outcome.version)
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
