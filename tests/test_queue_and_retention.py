"""The job queue and retention on real Redis and a real MongoDB wire-protocol server."""

from __future__ import annotations

import time

import pytest
from conftest import notice_seen

from g4l import keys
from g4l.context import Context
from g4l.errors import Busy, InvalidRequest, QueueFull
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


def test_all_positions_read_at_once_are_each_jobs_own(ctx: Context) -> None:
    """What a web node tells every waiting client after a notice (one read of the whole
    queue) is what each job's own position says."""
    jobs = [_job(ctx, Priority.BACKGROUND), _job(ctx), _job(ctx)]
    for job in jobs:
        ctx.queue.enqueue(job)
    ctx.redis.set(keys.JOB_SECONDS, 12.5)
    everyone = ctx.queue.positions()
    assert everyone == {job.id: ctx.queue.position(job.id) for job in jobs}
    assert [everyone[j.id].position for j in jobs] == [3, 1, 2]
    assert ctx.jobs.session_ids([j.id for j in jobs]) == {j.id: j.session_id for j in jobs}


def test_each_familys_jobs_go_to_the_workers_that_load_it(ctx: Context) -> None:
    """A jerry job waits for a worker that loads Stable Audio; a MusicGen-only worker takes
    the gary jobs queued after it, and the waiting order stays one for all."""
    session = ctx.sessions.create(status="queued")
    jerry = Job(id=new_job_id(), kind="text_to_audio", session_id=session.id, priority=Priority.INTERACTIVE,
                spec=GenerationSpec(model="debug-stable-audio", family="stable_audio", output_seconds=11))
    gary = _job(ctx)
    ctx.queue.enqueue(jerry)
    ctx.queue.enqueue(gary)
    assert [ctx.queue.position(j.id).position for j in (jerry, gary)] == [1, 2]
    assert ctx.queue.claim("gary-only", block_ms=10, families=["musicgen"]).job_id == gary.id
    assert ctx.queue.claim("gary-only", block_ms=10, families=["musicgen"]) is None
    taken = ctx.queue.claim("all", block_ms=10)
    assert taken.job_id == jerry.id and taken.stream == keys.stream("interactive", "stable_audio")
    # A spec for another family's model than its kind's is refused before anything is written.
    wrong = Job(id=new_job_id(), kind="transform", session_id=session.id,
                spec=GenerationSpec(model="debug-melodyflow", output_seconds=5))  # family left at musicgen
    with pytest.raises(InvalidRequest, match="runs on a melodyflow model"):
        ctx.queue.enqueue(wrong)
    assert ctx.jobs.get(wrong.id) is None


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
    assert notice_seen(pubsub, notices.FAILED)


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


def _claim_all(ctx: Context, consumer: str = "w1") -> list[str]:
    taken = []
    while (claimed := ctx.queue.claim(consumer, block_ms=0)) is not None:
        taken.append(claimed.job_id)
    return taken


def _by_position(ctx: Context, jobs: list[Job]) -> list[str]:
    return [j.id for j in sorted(jobs, key=lambda j: ctx.queue.position(j.id).position)]


def test_a_recovered_job_runs_before_newer_ones_and_positions_say_so(ctx: Context) -> None:
    """A dead worker's job goes back to the front of its class: it is taken before the
    interactive jobs queued after it (and the stations), and positions say so."""
    old = _job(ctx)
    ctx.queue.enqueue(old)
    claimed = ctx.queue.claim("ghost", block_ms=10)  # a worker with no heartbeat
    assert claimed is not None and claimed.job_id == old.id
    lifecycle.start(ctx, ctx.jobs.get(old.id), "ghost", claimed)
    station, newer, newest = _job(ctx, Priority.BACKGROUND), _job(ctx), _job(ctx)
    for job in (station, newer, newest):
        ctx.queue.enqueue(job)
    time.sleep(0.3)
    assert recovery.recover_orphans(ctx) == 1
    everyone = [old, newer, newest, station]
    assert [ctx.queue.position(j.id).position for j in everyone] == [1, 2, 3, 4]
    assert _claim_all(ctx) == [j.id for j in everyone]


def test_a_background_job_that_gave_way_goes_first_among_background_jobs_only(ctx: Context) -> None:
    """A station job that stepped aside for an interactive one runs again before the
    station jobs queued after it, never before an interactive job."""
    gave_way = _job(ctx, Priority.BACKGROUND)
    ctx.queue.enqueue(gave_way)
    claimed = ctx.queue.claim("w1", block_ms=10)
    assert claimed is not None
    job = ctx.jobs.get(gave_way.id)
    lifecycle.start(ctx, job, "w1", claimed)
    later_station, interactive = _job(ctx, Priority.BACKGROUND), _job(ctx)
    ctx.queue.enqueue(later_station)
    ctx.queue.enqueue(interactive)
    lifecycle.requeue(ctx, job, claimed, attempt_used=False)
    everyone = [interactive, gave_way, later_station]
    assert _by_position(ctx, everyone) == [j.id for j in everyone]
    assert _claim_all(ctx) == [j.id for j in everyone]
    assert ctx.jobs.get(gave_way.id).attempts == 0


def test_positions_are_the_order_workers_take_jobs_in_even_when_producers_race(ctx: Context) -> None:
    """Jobs queued from many threads at once, some put back at the front: the order the
    positions give is exactly the order the claims take (place and entry are one write)."""
    import threading

    jobs: list[Job] = []
    lock = threading.Lock()

    def produce(i: int) -> None:
        for n in range(6):
            job = _job(ctx, Priority.BACKGROUND if (i + n) % 3 == 0 else Priority.INTERACTIVE)
            ctx.queue.enqueue(job, front=n % 4 == 1)
            with lock:
                jobs.append(job)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(jobs) == 36
    expected = _by_position(ctx, jobs)
    assert [ctx.queue.position(j).position for j in expected] == list(range(1, 37))
    assert _claim_all(ctx) == expected


def test_a_recovered_result_whose_copy_is_gone_fails_clearly(ctx: Context) -> None:
    """A worker died after completing a job but before GridFS had its result, and the
    Redis copy expired meanwhile: the job fails with STORE_UNAVAILABLE instead of pointing
    at audio that does not exist, and its entry goes."""
    from g4l.jobs.lifecycle import Completion

    job = _job(ctx)
    ctx.queue.enqueue(job)
    claimed = ctx.queue.claim("ghost", block_ms=10)
    lifecycle.start(ctx, ctx.jobs.get(job.id), "ghost", claimed)
    blob_id = ctx.blobs.new_id()
    lifecycle.complete(ctx, ctx.jobs.get(job.id), Completion(blob_id), None)  # no hand-off left
    time.sleep(0.3)
    assert recovery.recover_orphans(ctx) == 1
    state = ctx.jobs.get(job.id)
    assert state.status is JobStatus.FAILED and state.error_code == "STORE_UNAVAILABLE", state
    assert state.output_blob is None
    assert ctx.sessions.get(job.session_id)["error_code"] == "STORE_UNAVAILABLE"
    assert all(ctx.redis.xpending(name, keys.WORKER_GROUP)["pending"] == 0 for name in ctx.queue.streams())


def test_a_waiting_claim_takes_a_job_queued_during_its_wait(ctx: Context) -> None:
    """A worker waiting on an empty queue is woken by a job of any class and takes it."""
    import threading

    station = _job(ctx, Priority.BACKGROUND)
    timer = threading.Timer(0.3, lambda: ctx.queue.enqueue(station))
    timer.start()
    try:
        claimed = ctx.queue.claim("w1", block_ms=5000)
    finally:
        timer.join()
    assert claimed is not None and claimed.job_id == station.id
    assert ctx.queue.claim("w1", block_ms=0) is None


def test_records_stay_compact_in_the_embedded_redis(ctx: Context) -> None:
    """The embedded Redis (as scripts/serve starts it) keeps a job record and a session as
    compact listpacks: they live for the retention time, so their size is what Redis grows
    by under a steady load. Redis's default made each a hash table at 3.5x the size."""
    spec = GenerationSpec(model="debug", output_seconds=30, description="slow ambient pads with a walking bass " * 4)
    job = Job(id=new_job_id(), kind="generate", session_id="", spec=spec)  # type: ignore[arg-type]
    ctx.jobs.save(job)
    ctx.jobs.update(job.id, status=JobStatus.COMPLETED, finished=time.time(), output_blob="6b175403727dd9a301e129c4",
                    worker="host-1234-abcdef", model_seconds=1.882, store_seconds=0.025)
    session = ctx.sessions.create(status="idle", params=spec.model_dump_json())
    for key in (keys.job(job.id), keys.session(session.id)):
        assert ctx.redis.object("encoding", key) == "listpack", key
        assert ctx.redis.memory_usage(key) < 1536, (key, ctx.redis.memory_usage(key))
