"""The job queue and retention on real Redis and a real MongoDB wire-protocol server."""

from __future__ import annotations

import time

import pytest

from g4l import keys
from g4l.context import Context
from g4l.errors import Busy, QueueFull
from g4l.jobs import lifecycle, notices, recovery
from g4l.jobs.records import Job, JobStatus, Priority, new_job_id
from g4l.jobs.spec import GenerationSpec
from g4l.store import retention


def _job(ctx: Context, priority: Priority = Priority.INTERACTIVE) -> Job:
    session = ctx.sessions.create(status="queued")
    job = Job(id=new_job_id(), kind="bang", session_id=session.id, spec=GenerationSpec(model="debug", output_seconds=30),
              priority=priority)
    ctx.sessions.update(session.id, job_id=job.id)
    return job


def test_interactive_jobs_go_before_background_and_positions_follow(ctx: Context) -> None:
    station = _job(ctx, Priority.BACKGROUND)
    ctx.queue.enqueue(station)
    first, second = _job(ctx), _job(ctx)
    ctx.queue.enqueue(first)
    ctx.queue.enqueue(second)
    assert ctx.queue.position(first.id).position == 1
    assert ctx.queue.position(second.id).position == 2
    assert ctx.queue.position(station.id).position == 3
    taken = [ctx.queue.claim("w1", block_ms=10) for _ in range(3)]
    assert ctx.queue.interactive_waiting() == 2
    assert [t.job_id for t in taken] == [first.id, second.id, station.id]
    assert ctx.queue.claim("w1", block_ms=10) is None


def test_queue_limit_is_never_exceeded(ctx: Context) -> None:
    for _ in range(3):
        ctx.queue.enqueue(_job(ctx), limit=3)
    with pytest.raises(QueueFull):
        ctx.queue.enqueue(_job(ctx), limit=3)
    assert ctx.queue.depth() == 3


def test_busy_session_cannot_take_a_second_job(ctx: Context) -> None:
    session = ctx.sessions.create()
    ctx.sessions.begin_job(session.id, "job-a")
    with pytest.raises(Busy):
        ctx.sessions.begin_job(session.id, "job-b")
    assert ctx.sessions.get(session.id)["job_id"] == "job-a"


def test_dead_workers_job_is_requeued_then_failed_after_its_attempts(ctx: Context) -> None:
    job = _job(ctx)
    ctx.queue.enqueue(job)
    pubsub = ctx.redis.pubsub()
    pubsub.subscribe(keys.NOTICES)
    for attempt in (1, 2):
        claimed = ctx.queue.claim("ghost", block_ms=10)  # a worker with no heartbeat
        assert claimed is not None and claimed.job_id == job.id
        lifecycle.start(ctx, ctx.jobs.get(job.id), "ghost", claimed)
        assert ctx.sessions.get(job.session_id).status == "running" and ctx.queue.running() == 1
        time.sleep(0.3)
        assert recovery.recover_orphans(ctx) == 1
        state = ctx.jobs.get(job.id)
        if attempt == 1:
            assert state.status is JobStatus.QUEUED and ctx.queue.position(job.id).position == 1
            assert ctx.sessions.get(job.session_id).status == "queued"
    assert state.status is JobStatus.FAILED and state.error_code == "GENERATION_FAILED"
    assert ctx.queue.running() == 0 and ctx.queue.depth() == 0
    session = ctx.sessions.get(job.session_id)
    assert session.status == "idle" and session["error_code"] == "GENERATION_FAILED"
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and notices.FAILED not in seen:
        msg = pubsub.get_message(timeout=0.5)
        if msg and msg["type"] == "message":
            seen.append(notices.decode(msg["data"])["type"])
    assert notices.FAILED in seen


def test_live_workers_jobs_are_left_alone(ctx: Context) -> None:
    job = _job(ctx)
    ctx.queue.enqueue(job)
    ctx.redis.set(keys.worker("alive"), "{}", ex=30)
    ctx.redis.sadd(keys.WORKERS, "alive")
    ctx.queue.claim("alive", block_ms=10)
    time.sleep(0.3)
    assert recovery.recover_orphans(ctx) == 0


def test_retention_sweeps_audio_of_expired_sessions_only(ctx: Context) -> None:
    live = ctx.sessions.create()
    kept = ctx.blobs.put(b"RIFF-live", session_id=live.id, kind="input")
    gone = ctx.blobs.put(b"RIFF-gone", session_id="expired-session", kind="input")
    ctx.settings.retention_hours = 0.5 / 3600  # half a second
    time.sleep(1.2)
    assert retention.sweep(ctx.blobs, ctx.sessions, ctx.settings.retention_seconds) == 1
    assert ctx.blobs.exists(kept) and not ctx.blobs.exists(gone)


def test_result_write_waits_for_delivery_then_stores_and_acknowledges(ctx: Context) -> None:
    from g4l.worker.result_writer import PendingWrite, ResultWriter

    writer = ResultWriter(ctx, defer_max_s=5.0)
    try:
        job = _job(ctx)
        ctx.queue.enqueue(job)
        claimed = ctx.queue.claim("w1", block_ms=10)
        blob_id = ctx.blobs.new_id()
        writer.submit(PendingWrite(job, claimed, blob_id, lambda: b"RIFF-result",
                                   {"session_id": job.session_id, "kind": "output"}))
        time.sleep(0.5)  # not delivered yet: nothing written, the entry still pending
        assert ctx.blobs.info(blob_id) is None
        assert ctx.redis.xpending(keys.stream("interactive"), keys.WORKER_GROUP)["pending"] == 1
        ctx.sessions.update(job.session_id, delivered=job.id)
        deadline = time.monotonic() + 5
        while ctx.blobs.info(blob_id) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ctx.blobs.get(blob_id) == b"RIFF-result"
        deadline = time.monotonic() + 5
        while ctx.redis.xpending(keys.stream("interactive"), keys.WORKER_GROUP)["pending"] and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert ctx.redis.xpending(keys.stream("interactive"), keys.WORKER_GROUP)["pending"] == 0

        # Nobody to deliver to: written anyway once the wait runs out.
        other = _job(ctx)
        ctx.queue.enqueue(other)
        claimed = ctx.queue.claim("w1", block_ms=10)
        blob_id = ctx.blobs.new_id()
        writer.defer_max_s = 0.3
        writer.submit(PendingWrite(other, claimed, blob_id, lambda: b"RIFF-2",
                                   {"session_id": other.session_id, "kind": "output"}))
    finally:
        writer.close()
    assert ctx.blobs.get(blob_id) == b"RIFF-2"


def test_a_job_queued_by_an_earlier_server_version_is_failed_clearly(ctx: Context) -> None:
    """A record without a spec (written before the spec existed) neither crashes the worker
    nor hangs its session: the worker fails it with a message that says what to do."""
    from g4l.engine.cache import ModelCache
    from g4l.worker.worker import Worker

    session = ctx.sessions.create(status="queued", job_id="old-job")
    ctx.redis.hset(keys.job("old-job"), mapping={"id": "old-job", "kind": "bang", "session_id": session.id,
                                                 "model": "debug", "params": "{}", "status": "queued"})
    ctx.redis.xadd(keys.stream("interactive"), {"job_id": "old-job"})
    assert ctx.jobs.get("old-job").stale
    worker = Worker(ctx, ModelCache(["debug"], "cpu"), "w-upgrade")
    assert worker.step(block_ms=10)
    job = ctx.jobs.get("old-job")
    assert job.status is JobStatus.FAILED and "earlier version" in (job.error or "")
    assert ctx.sessions.get(session.id).status == "idle"
    assert ctx.redis.xpending(keys.stream("interactive"), keys.WORKER_GROUP)["pending"] == 0
