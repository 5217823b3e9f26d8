"""Faults the launcher rides out (what ``scripts/serve`` runs, embedded stores included):
the embedded Redis killed (restarted on its port from its append-only file: sessions and
audio are still there, the worker waits instead of crash-looping), Redis paused while a
job is in flight (the job finishes, nobody is taken for dead), and the web process killed
(restarted; clients reconnect). And a result's last write on a live worker: a store that is
down or paused is retried until it takes the result, or the job fails clearly after
G4L_RESULT_STORE_MAX_S; never pending forever."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time

import pytest
from conftest import RunningServer, make_wav, notice_seen, start_server, wait_until, wav_info

from plugin_protocol import events
from plugin_protocol.client import DeviceClient


def _pids(pattern: str, parent: int | None = None) -> list[int]:
    args = ["pgrep", "-f", pattern] + (["-P", str(parent)] if parent else [])
    out = subprocess.run(args, capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _log_events(data_dir, event: str) -> list[dict]:
    found = []
    for line in (data_dir / "server.log").read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == event:
                found.append(doc)
    return found


def _redis_pids(data) -> list[int]:
    """The embedded redis-server (it retitles itself ``redis-server 127.0.0.1:<port>``)."""
    port = _log_events(data, "embedded redis started")[-1]["url"].rsplit(":", 1)[1].split("/")[0]
    return _pids(f"redis-server 127.0.0.1:{port}")


@pytest.fixture
def embedded_server(tmp_path, mongo_server) -> tuple[RunningServer, object]:
    data = tmp_path / "data"
    data.mkdir()
    server = start_server(data, redis_url=None, mongo_url=mongo_server.url, G4L_MONGO_DB="g4l_faults",
                          G4L_HLS_ENABLED="false", G4L_REDIS_WAIT_S="60")
    yield server, data
    server.stop()


def test_embedded_redis_killed_is_restarted_and_nothing_is_lost(embedded_server) -> None:
    server, data = embedded_server
    with DeviceClient(server.url, timeout=120) as c:
        first = c.bang(make_wav(4), model_name="debug", prompt_duration=4)
    time.sleep(1.5)  # appendfsync everysec: the session is on disk
    [redis_pid] = _redis_pids(data)
    workers_before = _pids("g4l.worker", parent=server.proc.pid)
    os.kill(redis_pid, signal.SIGKILL)
    new_pid = wait_until(lambda: [p for p in _redis_pids(data) if p != redis_pid], 30,
                    "the launcher to restart redis")
    assert new_pid
    with DeviceClient(server.url, timeout=120) as c:
        wait_until(lambda: server.health()[0] == 200, 60, "health to be live again")
        status = c.verify(first.session_id)
        assert status["exists"] and status["version"] == 1  # the session survived (AOF)
        again = c.continue_(first.session_id)  # its audio is still in GridFS
        assert wav_info(again.audio).duration == pytest.approx(56, abs=0.05)
    # The worker waited for Redis instead of dying and being restarted in a loop.
    assert _pids("g4l.worker", parent=server.proc.pid) == workers_before
    assert len(_log_events(data, "embedded store restarted")) == 1


def test_redis_paused_with_a_job_in_flight_the_job_still_finishes(embedded_server) -> None:
    server, data = embedded_server
    [redis_pid] = _redis_pids(data)
    workers_before = _pids("g4l.worker", parent=server.proc.pid)
    with DeviceClient(server.url, timeout=120) as c:
        since = c.mark()
        c.emit(events.PROCESS_AUDIO, {"audio_data": base64.b64encode(make_wav(6)).decode(),
                                      "model_name": "debug", "prompt_duration": 6})
        _name, ack = c.wait_for(events.PROCESS_AUDIO_RECEIVED, since)
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            time.sleep(8)
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        _name, result = c.wait_for(events.AUDIO_PROCESSED, since, session_id=ack["session_id"], timeout=90)
        assert wav_info(base64.b64decode(result["audio_data"])).duration == pytest.approx(30, abs=0.05)
        after = c.bang(make_wav(4), model_name="debug", prompt_duration=4)  # and the next one works
        assert wav_info(after.audio).duration == pytest.approx(30, abs=0.05)
    assert _pids("g4l.worker", parent=server.proc.pid) == workers_before  # no worker was restarted


def test_web_process_killed_is_restarted_and_clients_come_back(embedded_server) -> None:
    server, _data = embedded_server
    with DeviceClient(server.url, timeout=120) as c:
        first = c.bang(make_wav(4), model_name="debug", prompt_duration=4)
        [web_pid] = _pids("g4l.web", parent=server.proc.pid)
        os.kill(web_pid, signal.SIGKILL)
        wait_until(lambda: [p for p in _pids("g4l.web", parent=server.proc.pid) if p != web_pid], 30,
              "the launcher to restart the web process")
        wait_until(lambda: server.health()[0] == 200 if _can_connect(server) else False, 60, "the web to answer")
        # The same client reconnects by itself and the session is there.
        status = wait_until(lambda: _verify(c, first.session_id), 60, "the client to reconnect")
        assert status["exists"]
        again = c.continue_(first.session_id)
        assert wav_info(again.audio).duration == pytest.approx(56, abs=0.05)


def _can_connect(server: RunningServer) -> bool:
    try:
        return server.health()[0] in (200, 503)
    except OSError:
        return False


def _verify(c: DeviceClient, session_id: str) -> dict | None:
    try:
        return c.verify(session_id)
    except Exception:
        return None


# ---------------------------------------------------------------- a result's last write
@pytest.fixture
def store_ctx(tmp_path, redis_server):
    """A Context on its own Redis database and on a store process of its own (durable, so
    it can be stopped and started again on its port with its data, or paused)."""
    from g4l import embedded
    from g4l.context import Context
    from g4l.settings import Settings
    from g4l.store.blobs import BlobStore

    store = embedded.start_mongo(tmp_path / "store")
    settings = Settings(REDIS_URL=redis_server.url.rsplit("/", 1)[0] + "/7", MONGO_URL=store.url,
                        mongo_db="g4l_result_faults", models=["debug"], worker_dead_after_s=0.2)
    c = Context.from_settings(settings)
    # A short server-selection timeout: each refused attempt takes about a second, so the
    # old three attempts were over long before the store came back.
    c.blobs = BlobStore(store.url, settings.mongo_db, timeout_ms=500)
    c.redis.flushdb()
    yield c, store
    c.redis.flushdb()
    if store.proc.poll() is None:
        os.kill(store.proc.pid, signal.SIGCONT)
    store.stop()


def _delivered_result(c, wav: bytes):  # type: ignore[no-untyped-def]
    """A job completed on a live worker, its result handed to the web nodes and waiting
    for its GridFS write (what the worker's _finish leaves to the result writer)."""
    from g4l import keys
    from g4l.jobs import handoff, lifecycle
    from g4l.jobs.lifecycle import Completion
    from g4l.jobs.records import Job, new_job_id
    from g4l.jobs.spec import GenerationSpec
    from g4l.store import heartbeats
    from g4l.worker.result_writer import PendingWrite

    heartbeats.publish(c.redis, keys.WORKERS, keys.worker, "w-live", {"job_ids": []}, 600)
    session = c.sessions.create(status="queued")
    job = Job(id=new_job_id(), kind="bang", session_id=session.id,
              spec=GenerationSpec(model="debug", output_seconds=30))
    c.sessions.update(session.id, job_id=job.id)
    c.queue.enqueue(job)
    claimed = c.queue.claim("w-live", block_ms=10)
    lifecycle.start(c, job, "w-live", claimed)
    blob_id = c.blobs.new_id()
    handoff.put_whole(c.redis_bytes, job.id, wav)
    meta = {"session_id": job.session_id, "kind": "output", "job_id": job.id}
    c.jobs.update(job.id, output_meta=json.dumps(meta))
    lifecycle.complete(c, job, Completion(blob_id, session={"current_blob": blob_id}), None)
    return job, PendingWrite(job, claimed, blob_id, lambda: wav, meta)


def _pending(c) -> int:  # type: ignore[no-untyped-def]
    from g4l import keys

    return sum(c.redis.xpending(name, keys.WORKER_GROUP)["pending"] for name in c.queue.streams())


@pytest.mark.slow  # waits out a store outage
def test_a_result_whose_store_is_down_is_retried_until_the_store_is_back(store_ctx, tmp_path) -> None:
    """The store is gone when the result's write starts and comes back 10 s later (on its
    port, with its data): the worker keeps retrying, the Redis copy stays readable meanwhile,
    then the result is stored and its job's entry acknowledged: not pending forever."""
    import threading

    from g4l import embedded, keys
    from g4l.jobs.records import JobStatus
    from g4l.worker.result_writer import store_result

    c, store = store_ctx
    wav = make_wav(2)
    job, write = _delivered_result(c, wav)
    store.stop(timeout=10)
    outcome: list[bool] = []
    writer = threading.Thread(target=lambda: outcome.append(store_result(c, write, max_s=120)), daemon=True)
    writer.start()
    time.sleep(10)
    assert writer.is_alive() and _pending(c) == 1
    assert c.redis.ttl(keys.result(job.id)) > 0  # readers still get it from Redis
    store.proc = embedded.start_mongo(tmp_path / "store", port=store.port).proc
    writer.join(90)
    assert outcome == [True]
    assert c.blobs.get(write.blob_id) == wav
    assert _pending(c) == 0 and c.redis.get(keys.result(job.id)) is None
    assert c.jobs.get(job.id).status is JobStatus.COMPLETED


@pytest.mark.slow  # waits out a store outage
def test_a_result_the_store_never_takes_fails_clearly_after_the_bound(store_ctx) -> None:
    """The store is paused (SIGSTOP: it holds the connection and never answers) through the
    write and past G4L_RESULT_STORE_MAX_S: the job fails with STORE_UNAVAILABLE, its session
    says why, a FAILED notice goes out and the entry is acknowledged; nothing hangs."""
    from g4l import keys
    from g4l.jobs import notices
    from g4l.jobs.records import JobStatus
    from g4l.worker.result_writer import store_result

    c, store = store_ctx
    job, write = _delivered_result(c, make_wav(2))
    pubsub = c.redis.pubsub()
    pubsub.subscribe(keys.NOTICES)
    os.kill(store.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert store_result(c, write, max_s=3) is False
        assert time.monotonic() - started < 60
    finally:
        os.kill(store.proc.pid, signal.SIGCONT)
    state = c.jobs.get(job.id)
    assert state.status is JobStatus.FAILED and state.error_code == "STORE_UNAVAILABLE", state
    assert "not kept" in (state.error or "")
    assert c.sessions.get(job.session_id)["error_code"] == "STORE_UNAVAILABLE"
    assert _pending(c) == 0 and c.redis.get(keys.result(job.id)) is None
    assert notice_seen(pubsub, notices.FAILED)
