"""Continuous batching in the worker (issue 10), on the real server and the tiny model: one
worker holds several jobs at once and their model steps share one decoding loop; a
cancelled job leaves without disturbing the others; a worker killed while it holds several
jobs has every one of them recovered or failed clearly.

Nothing here asserts speed (scripts/bench_concurrency prints it): overlap is read from the
job records' ``started``/``finished`` times and from the worker's heartbeat.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from typing import Any

import pytest
import redis as redis_lib
import requests

from conftest import make_wav, start_server, wav_info
from g4l import embedded, keys
from g4l.jobs.records import Job, Priority, new_job_id
from g4l.jobs.spec import GenerationSpec
from g4l.store import heartbeats
from plugin_protocol import events
from plugin_protocol.client import DeviceClient, ProtocolError


@pytest.fixture
def own_stores():
    r = embedded.start_redis(None)
    m = embedded.start_mongo(None)
    yield r, m
    r.stop()
    m.stop()


class HeartbeatWatch:
    """Samples the workers' heartbeats in a thread: the most jobs one worker held at once,
    and (on demand) a worker holding given jobs."""

    def __init__(self, r: redis_lib.Redis) -> None:
        self.r = r
        self.most_held = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def beats(self) -> list[dict[str, Any]]:
        out = []
        for key in self.r.scan_iter("g4l:worker:*"):
            raw = self.r.get(key)
            if raw:
                out.append(json.loads(raw))
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            for beat in self.beats():
                self.most_held = max(self.most_held, len(beat.get("job_ids") or []))

    def __enter__(self) -> HeartbeatWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.fixture(scope="module")
def batching(tmp_path_factory):
    """One batching server on stores of its own for the tests that watch it batch (the
    worker-kill test has its own): (server, its Redis URL)."""
    r = embedded.start_redis(None)
    m = embedded.start_mongo(None)
    try:
        server = start_server(tmp_path_factory.mktemp("batching"), redis_url=r.url, mongo_url=m.url,
                              G4L_MAX_BATCH="8")
        yield server, r.url
        server.stop()
    finally:
        r.stop()
        m.stop()


def _jobs(r: redis_lib.Redis, job_ids: list[str]) -> list[dict[str, str]]:
    return [r.hgetall(f"g4l:job:{job_id}") for job_id in job_ids]


def _bang_payload(seconds: float = 4) -> dict[str, Any]:
    return {"audio_data": base64.b64encode(make_wav(seconds)).decode(), "model_name": "debug",
            "prompt_duration": int(seconds)}


def test_simultaneous_bangs_run_together_in_one_worker(batching) -> None:
    """Four devices bang at once on one worker with G4L_MAX_BATCH=8: all get their 30 s,
    the heartbeat names several jobs at once, and the four jobs ran at the same time."""
    server, redis_url = batching
    r = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    clients = [DeviceClient(server.url, timeout=180).connect() for _ in range(4)]
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def bang(i: int) -> None:
        try:
            results[i] = clients[i].bang(make_wav(4), model_name="debug", prompt_duration=4)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with HeartbeatWatch(r) as watch:
        threads = [threading.Thread(target=bang, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
    for c in clients:
        c.close()
    assert not errors, errors
    assert len(results) == 4
    for result in results.values():
        assert wav_info(result.audio).duration == pytest.approx(30, abs=0.05)
    jobs = _jobs(r, [res.job_id for res in results.values()])
    assert all(j["status"] == "completed" and j["attempts"] == "1" for j in jobs), jobs
    # One worker ran them all, and all four were running at one moment.
    assert len({j["worker"] for j in jobs}) == 1
    started = [float(j["started"]) for j in jobs]
    finished = [float(j["finished"]) for j in jobs]
    assert max(started) < min(finished), (started, finished)
    assert watch.most_held >= 2, watch.most_held


def test_cancelling_one_of_several_running_jobs_leaves_the_others_intact(batching) -> None:
    """Five 30 s generations run batched; one is cancelled while all run: it ends canceled
    with no audio, and the other four complete with their whole output."""
    server, redis_url = batching
    r = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    api = server.url + "/api/v1"
    ids = []
    for i in range(5):
        resp = requests.post(api + "/generate", json={"prompt": f"row {i}", "duration": 30, "seed": i},
                             timeout=30)
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["job_id"])
    target, others = ids[2], ids[:2] + ids[3:]
    deadline = time.monotonic() + 120
    while True:  # cancel once every job runs and the target has made progress
        jobs = _jobs(r, ids)
        if all(j.get("status") == "running" for j in jobs) and int(jobs[2].get("progress") or 0) > 0:
            break
        assert not any(j.get("status") in ("completed", "failed", "canceled") for j in jobs), jobs
        assert time.monotonic() < deadline, jobs
        time.sleep(0.02)
    resp = requests.delete(f"{api}/jobs/{target}", timeout=30)
    assert resp.status_code in (200, 202), resp.text
    for job_id in ids:
        deadline = time.monotonic() + 120
        while r.hget(f"g4l:job:{job_id}", "status") not in ("completed", "failed", "canceled"):
            assert time.monotonic() < deadline, job_id
            time.sleep(0.05)
    cancelled = r.hgetall(f"g4l:job:{target}")
    assert cancelled["status"] == "canceled", cancelled
    assert requests.get(f"{api}/jobs/{target}/audio", timeout=30).status_code == 409
    for job_id in others:
        job = r.hgetall(f"g4l:job:{job_id}")
        assert job["status"] == "completed", job
        # They were running when the target left, and went on after it.
        assert float(job["started"]) < float(cancelled["finished"]) < float(job["finished"])
        audio = requests.get(f"{api}/jobs/{job_id}/audio", timeout=30)
        assert audio.status_code == 200
        assert wav_info(audio.content).duration == pytest.approx(30, abs=1e-3)


def test_worker_killed_while_holding_several_jobs_recovers_or_fails_each(own_stores, tmp_path) -> None:
    """SIGKILL the worker once its heartbeat names at least two of four bangs: every bang
    then ends for its device, with a 30 s result (recovered: a second attempt on the
    restarted worker) or a clear GENERATION_FAILED; no job is left running."""
    r_proc, m_proc = own_stores
    server = start_server(tmp_path, redis_url=r_proc.url, mongo_url=m_proc.url, G4L_MAX_BATCH="8",
                          G4L_JOB_MAX_ATTEMPTS="2")
    try:
        r = redis_lib.Redis.from_url(r_proc.url, decode_responses=True)
        clients = [DeviceClient(server.url, timeout=240).connect() for _ in range(4)]
        marks = [c.mark() for c in clients]
        acks = []
        for c in clients:
            c.emit(events.PROCESS_AUDIO, _bang_payload())
        for c, since in zip(clients, marks, strict=True):
            acks.append(c.wait_for(events.PROCESS_AUDIO_RECEIVED, since)[1])
        ids = [ack["job_id"] for ack in acks]
        watch = HeartbeatWatch(r)
        held: list[str] = []
        deadline = time.monotonic() + 120
        while len(held) < 2:
            assert time.monotonic() < deadline, "no worker ever held two of the jobs"
            for beat in watch.beats():
                mine = [j for j in beat.get("job_ids") or [] if j in ids]
                if len(mine) >= 2:
                    os.kill(beat["pid"], signal.SIGKILL)
                    held = mine
                    break
            time.sleep(0.02)
        outcomes: dict[str, str] = {}
        for c, since, ack in zip(clients, marks, acks, strict=True):
            try:
                _, data = c.wait_for(events.AUDIO_PROCESSED, since, session_id=ack["session_id"])
                assert wav_info(base64.b64decode(data["audio_data"])).duration == pytest.approx(30, abs=0.05)
                outcomes[ack["job_id"]] = "completed"
            except ProtocolError as exc:
                assert exc.code == "GENERATION_FAILED", exc
                outcomes[ack["job_id"]] = "failed"
        for c in clients:
            c.close()
        for job_id in ids:
            job = r.hgetall(f"g4l:job:{job_id}")
            assert job["status"] == outcomes[job_id], job
            if job_id in held and job["status"] == "completed":
                assert job["attempts"] == "2", job  # run again after the kill
            if job["status"] == "failed":
                assert job["error_code"] == "GENERATION_FAILED" and job["error"], job
        # Every held job came back on the second attempt (two are allowed).
        assert all(outcomes[j] == "completed" for j in held), (held, outcomes)
        assert not r.smembers("g4l:queue:running") & set(ids), r.smembers("g4l:queue:running")
    finally:
        server.stop()


def test_queue_eta_counts_the_slots_of_live_workers(ctx) -> None:
    """Positions stay the order of the queue, but the ETA counts the jobs the live workers
    hold at once: with 8 slots a job behind 2 others starts at once, with 1 it waits."""
    jobs = []
    for _ in range(3):
        session = ctx.sessions.create(status="queued")
        job = Job(id=new_job_id(), kind="bang", session_id=session.id,
                  spec=GenerationSpec(model="debug", output_seconds=30), priority=Priority.INTERACTIVE)
        ctx.sessions.update(session.id, job_id=job.id)
        ctx.queue.enqueue(job)
        jobs.append(job)
    avg = ctx.queue.average_job_seconds()
    # No worker beats: one slot (as before batching), one job after another.
    assert ctx.queue.slots() == 1
    assert ctx.queue.position(jobs[2].id).estimated_seconds == pytest.approx(3 * avg, abs=0.1)
    heartbeats.publish(ctx.redis, keys.WORKERS, keys.worker, "w-batch", {"max_batch": 8, "job_ids": []}, 30)
    assert ctx.queue.slots() == 8
    third = ctx.queue.position(jobs[2].id)
    assert third.position == 3 and third.estimated_seconds == pytest.approx(avg, abs=0.1)
    heartbeats.publish(ctx.redis, keys.WORKERS, keys.worker, "w-old", {"job_id": None}, 30)
    assert ctx.queue.slots() == 9  # a worker from before batching counts as one slot


def _generate_job(ctx, priority: Priority, seed: int | None, seconds: float = 30,  # type: ignore[no-untyped-def]
                  model: str = "debug") -> Job:
    job = Job(id=new_job_id(), kind="generate", session_id="",
              spec=GenerationSpec(model=model, output_seconds=seconds, seed=seed), priority=priority)
    ctx.queue.enqueue(job)
    return job


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _worker(ctx, name: str, models: tuple[str, ...] = ("debug",), **kw: Any):  # type: ignore[no-untyped-def]
    """An in-process batching worker on the tiny model, with a live heartbeat (so the
    recovery of its own maintenance sees it alive), running in a thread."""
    from g4l.engine.cache import ModelCache
    from g4l.worker.heartbeat import Heartbeat
    from g4l.worker.worker import Worker

    worker = Worker(ctx, ModelCache(list(models), "cpu"), name, **kw)
    worker.heartbeat = Heartbeat(ctx.redis, name, 0.2, 30.0,
                                 lambda: {"job_ids": worker.held(), "max_batch": worker.max_batch})
    worker.heartbeat.start()
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    return worker, thread


def _stop(worker, thread: threading.Thread) -> None:  # type: ignore[no-untyped-def]
    worker.stop()
    thread.join(60)
    worker.heartbeat.stop()


def _final(ctx, jobs: list[Job]) -> list[Job]:  # type: ignore[no-untyped-def]
    out = [ctx.jobs.get(j.id) for j in jobs]
    return [j for j in out if j is not None and j.status.final]


@pytest.mark.slow  # a worker runs the model end to end
def test_a_full_batching_worker_makes_room_for_an_interactive_job(ctx) -> None:
    """Two background jobs (stations' priority) fill a worker of batch 2; an interactive job
    that arrives starts before either of them finishes: one gives way (back in the queue,
    its attempt not counted) and runs again once a slot frees. All three complete."""
    background = [_generate_job(ctx, Priority.BACKGROUND, seed) for seed in (1, 2)]
    worker, thread = _worker(ctx, "w-priority", max_batch=2)
    try:
        _wait(lambda: len(worker.held()) == 2, 120, "both background jobs held")
        interactive = _generate_job(ctx, Priority.INTERACTIVE, 3)
        everyone = [*background, interactive]
        _wait(lambda: len(_final(ctx, everyone)) == 3, 240, "all three jobs to end")
    finally:
        _stop(worker, thread)
    jobs = {j.id: j for j in _final(ctx, everyone)}
    assert all(j.status.value == "completed" for j in jobs.values()), jobs
    first = jobs[interactive.id]
    assert first.started is not None
    bg = [jobs[j.id] for j in background]
    # It started while the batch was full of background jobs: one of them stepped aside,
    # so the interactive job did not wait for a slot to free by itself.
    assert sum(1 for j in bg if j.started is not None and j.started > first.started) == 1, (first, bg)
    gave_way = next(j for j in bg if j.started is not None and j.started > first.started)
    assert gave_way.attempts == 1  # giving way cost it no attempt
    assert all(j.finished is not None and j.finished > first.started for j in bg)


@pytest.mark.slow  # a worker runs the model end to end
def test_the_worker_sets_its_loops_kv_budget(ctx) -> None:
    """G4L_KV_BUDGET_MB reaches each model's decoding loop: with a budget below two rows'
    cache, two jobs held at once still both complete, decoding one after the other (a lone
    row always runs); without one they share the batch."""
    # The tiny model's 30 s row needs 1.5 MiB of cache alone, 2 rows 3 MiB.
    for budget_mb, most_rows in ((2, 1), (0, 2)):
        ctx.settings = ctx.settings.model_copy(update={"kv_budget_mb": budget_mb})
        jobs = [_generate_job(ctx, Priority.INTERACTIVE, seed) for seed in (1, 2)]
        worker, thread = _worker(ctx, f"w-kv{budget_mb}", max_batch=2)
        try:
            _wait(lambda: len(_final(ctx, jobs)) == 2, 240, "both jobs to end")  # noqa: B023
            assert all(j.status.value == "completed" for j in _final(ctx, jobs))
            loop = worker._loops["debug"].loop
            assert loop.cache.budget_bytes == (budget_mb * 2**20 or None)
            assert loop.most_active == most_rows, (budget_mb, loop.most_active)
        finally:
            _stop(worker, thread)


@pytest.mark.slow  # a worker runs the model end to end
def test_a_job_that_does_not_fit_the_gpu_fails_alone_and_the_worker_goes_on(ctx, monkeypatch) -> None:
    """Out of GPU memory, injected at the engine boundary (the test-only switch): two jobs
    whose shared batch does not fit are split and both complete; a job that does not fit
    even alone fails with GPU_OUT_OF_MEMORY; the same worker then serves the next job."""
    from g4l.engine import memory

    monkeypatch.setattr(memory, "TEST_ONLY_OOM_ABOVE_ROWS", 1)
    pair = [_generate_job(ctx, Priority.INTERACTIVE, seed, seconds=6) for seed in (1, 2)]
    worker, thread = _worker(ctx, "w-oom", max_batch=2)
    try:
        _wait(lambda: len(_final(ctx, pair)) == 2, 240, "both jobs to end")
        assert [j.status.value for j in _final(ctx, pair)] == ["completed", "completed"]
        assert worker._loops["debug"].loop.out_of_memory >= 1  # they met in one batch, which was split
        monkeypatch.setattr(memory, "TEST_ONLY_OOM_ABOVE_ROWS", 0)
        too_big = _generate_job(ctx, Priority.INTERACTIVE, 3, seconds=2)
        _wait(lambda: len(_final(ctx, [too_big])) == 1, 120, "the job that does not fit to end")
        failed = ctx.jobs.get(too_big.id)
        assert failed.status.value == "failed" and failed.error_code == "GPU_OUT_OF_MEMORY", failed
        monkeypatch.setattr(memory, "TEST_ONLY_OOM_ABOVE_ROWS", None)
        after = _generate_job(ctx, Priority.INTERACTIVE, 4, seconds=2)
        _wait(lambda: len(_final(ctx, [after])) == 1, 120, "the next job to end")
        assert ctx.jobs.get(after.id).status.value == "completed"
    finally:
        _stop(worker, thread)


@pytest.mark.slow  # a worker runs two models end to end, past their window
def test_same_seed_same_audio_beside_another_models_job_in_one_worker(ctx, tmp_path) -> None:
    """One batching worker, two models, outputs past the 30 s window (AudioCraft's windowed
    extension on the stock engine, one job thread each): a seeded job gives the same audio
    alone and beside the other model's unseeded job."""
    from g4l.engine import save_debug_checkpoint

    other = str(save_debug_checkpoint(tmp_path / "other-model", seed=1))
    worker, thread = _worker(ctx, "w-seeds", models=("debug", other), max_batch=2)
    try:
        alone = _generate_job(ctx, Priority.INTERACTIVE, 7, seconds=31)
        _wait(lambda: len(_final(ctx, [alone])) == 1, 240, "the job alone to end")
        beside = _generate_job(ctx, Priority.INTERACTIVE, None, seconds=31, model=other)
        _wait(lambda: bool(worker.held()), 60, "the other model's job to start")
        again = _generate_job(ctx, Priority.INTERACTIVE, 7, seconds=31)
        _wait(lambda: len(_final(ctx, [beside, again])) == 2, 480, "both jobs to end")
    finally:
        _stop(worker, thread)
    jobs = {j.id: j for j in _final(ctx, [alone, beside, again])}
    assert all(j.status.value == "completed" for j in jobs.values()), jobs
    b, a = jobs[beside.id], jobs[again.id]
    assert a.started is not None and b.finished is not None and a.started < b.finished  # they overlapped
    first, second = (ctx.blobs.get(jobs[j.id].output_blob or "") for j in (alone, again))
    assert first == second
