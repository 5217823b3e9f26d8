"""Failures users must survive: a worker killed mid-generation, a flood of requests,
a store going away, and a full restart of the server."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import redis as redis_lib

from conftest import ROOT, make_wav, start_server, wav_info
from g4l import embedded
from plugin_protocol import events
from plugin_protocol.client import DeviceClient, ProtocolError


def _kill_worker_mid_job(r: redis_lib.Redis, job_id: str, timeout: float = 60) -> int:
    """SIGKILL the worker as soon as its heartbeat says it runs ``job_id``; returns its pid.

    Matching the id (not just "some job") matters: right after a previous job the
    heartbeat may still name that one for an instant."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for key in r.scan_iter("g4l:worker:*"):
            raw = r.get(key)
            if raw and json.loads(raw).get("job_id") == job_id:
                pid = json.loads(raw)["pid"]
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.02)
    raise AssertionError(f"no worker ever took job {job_id}")


@pytest.fixture(scope="module")
def recovering(tmp_path_factory):
    """One server, on stores of its own, for the tests that kill its worker mid-job and the
    flood: two attempts per job, 5 generation requests a minute per client, 3 jobs queued
    at most. Each test waits for its own answers, and the flood (3 requests or fewer
    before it) runs last."""
    r = embedded.start_redis(None)
    m = embedded.start_mongo(None)
    server = start_server(tmp_path_factory.mktemp("recovering"), redis_url=r.url, mongo_url=m.url,
                          G4L_JOB_MAX_ATTEMPTS="2", G4L_RATE_LIMIT_PER_MINUTE="5", G4L_MAX_QUEUE="3")
    yield server, redis_lib.Redis.from_url(r.url, decode_responses=True)
    server.stop()
    r.stop()
    m.stop()


@pytest.fixture
def own_stores(tmp_path):
    r = embedded.start_redis(None)
    m = embedded.start_mongo(None)
    yield r, m
    r.stop()
    m.stop()


def test_worker_killed_mid_generation_job_is_recovered(recovering) -> None:
    server, r = recovering
    with DeviceClient(server.url, timeout=180) as c:
        since = c.mark()
        c.emit(events.PROCESS_AUDIO, {"audio_data": base64.b64encode(make_wav(6)).decode(),
                                      "model_name": "debug", "prompt_duration": 6})
        _, ack = c.wait_for(events.PROCESS_AUDIO_RECEIVED, since)
        _kill_worker_mid_job(r, ack["job_id"])
        # The launcher restarts the worker; the dead worker's job gets a second attempt.
        _, result = c.wait_for(events.AUDIO_PROCESSED, since, session_id=ack["session_id"])
        assert wav_info(base64.b64decode(result["audio_data"])).duration == pytest.approx(30, abs=0.05)
        job = r.hgetall(f"g4l:job:{ack['job_id']}")
        assert job["status"] == "completed" and job["attempts"] == "2"


def test_jerry_and_terry_jobs_of_a_killed_worker_are_recovered(recovering) -> None:
    """jerry's and terry's jobs go through the same queue as gary's: a worker killed while it
    runs one is replaced, the job runs again, and the client that waits gets its answer
    (jerry's HTTP request its clip; the device its transform, made once in the history)."""
    server, r = recovering
    answer: dict = {}

    def jerry() -> None:
        body = json.dumps({"prompt": "dusty breakbeat 120bpm", "steps": 250, "seed": 5,
                           "return_format": "base64"}).encode()
        req = urllib.request.Request(server.url + "/audio/generate", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=240) as resp:
            answer.update(json.load(resp))

    asking = threading.Thread(target=jerry)
    asking.start()
    deadline = time.monotonic() + 60
    job_id = None
    while job_id is None and time.monotonic() < deadline:  # the jerry job, as soon as it is queued
        job_id = next((k.split(":")[2] for k in r.scan_iter("g4l:job:*")
                       if k.count(":") == 2 and r.hget(k, "kind") == "text_to_audio"), None)
        time.sleep(0.02)
    assert job_id, "the jerry request queued no job"
    _kill_worker_mid_job(r, job_id)
    asking.join(240)
    assert answer.get("success") is True and answer["metadata"]["seed"] == 5, answer
    assert wav_info(base64.b64decode(answer["audio_base64"])).duration == pytest.approx(11.0, abs=0.001)
    assert r.hget(f"g4l:job:{job_id}", "attempts") == "2"

    with DeviceClient(server.url, timeout=240) as c:
        take = make_wav(45)  # past the 30 s window: several edits, time enough to be killed in
        since = c.mark()
        c.emit(events.TRANSFORM_AUDIO, {"audio_data": base64.b64encode(take).decode(), "variation": "celtic"})
        _, ack = c.wait_for(events.TRANSFORM_AUDIO_RECEIVED, since)
        _kill_worker_mid_job(r, ack["job_id"])
        _, result = c.wait_for(events.AUDIO_TRANSFORMED, since, session_id=ack["session_id"])
        assert wav_info(base64.b64decode(result["audio_data"])).frames == wav_info(take).frames
        assert result["variation"] == "celtic" and r.hget(f"g4l:job:{ack['job_id']}", "attempts") == "2"
        status = c.verify(ack["session_id"])
        assert status["generation_in_progress"] is False and status["version"] == 2  # the upload, one transform


def test_worker_killed_on_last_attempt_gives_a_clear_error(own_stores, tmp_path) -> None:
    r_proc, m_proc = own_stores
    server = start_server(tmp_path, redis_url=r_proc.url, mongo_url=m_proc.url, G4L_JOB_MAX_ATTEMPTS="1")
    try:
        r = redis_lib.Redis.from_url(r_proc.url, decode_responses=True)
        with DeviceClient(server.url, timeout=180) as c:
            bang = c.bang(make_wav(4), model_name="debug", prompt_duration=4)
            since = c.mark()
            # 120 s: several model windows, so the kill surely lands before the result exists.
            c.emit(events.CONTINUE_MUSIC, {"session_id": bang.session_id, "duration": 120})
            _, ack = c.wait_for(events.CONTINUE_MUSIC_RECEIVED, since)
            _kill_worker_mid_job(r, ack["job_id"])
            with pytest.raises(ProtocolError) as err:
                c.wait_for(events.MUSIC_CONTINUED, since, session_id=bang.session_id)
            assert err.value.code == "GENERATION_FAILED"
            # Never left "in progress": the session is usable again, with its audio intact.
            status = c.verify(bang.session_id)
            assert status["generation_in_progress"] is False and status["version"] == 1
            again = c.continue_(bang.session_id)
            assert wav_info(again.audio).duration == pytest.approx(56, abs=0.05)
    finally:
        server.stop()


def test_flood_of_requests_is_rate_limited_and_queue_stays_bounded(recovering) -> None:
    server, r = recovering
    payload = {"audio_data": base64.b64encode(make_wav(2)).decode(), "model_name": "debug",
               "prompt_duration": 2}
    with DeviceClient(server.url) as c:
        since = c.mark()
        for _ in range(40):
            c.emit(events.PROCESS_AUDIO, payload)
        deadline = time.monotonic() + 30
        while len(c.events_since(since, events.ERROR)) + len(c.events_since(since, events.PROCESS_AUDIO_RECEIVED)) < 40:
            assert time.monotonic() < deadline, "the server stopped answering"
            time.sleep(0.1)
        codes = {e["code"] for e in c.events_since(since, events.ERROR)}
        accepted = c.events_since(since, events.PROCESS_AUDIO_RECEIVED)
        assert len(accepted) <= 5
        assert codes <= {"RATE_LIMITED", "QUEUE_FULL"} and "RATE_LIMITED" in codes
        limited = next(e for e in c.events_since(since, events.ERROR) if e["code"] == "RATE_LIMITED")
        assert 0 < limited["retry_after"] <= 61
        assert r.zcard("g4l:queue:waiting") <= 3
    status, body = server.health()
    assert status == 200


def test_health_reports_a_store_that_is_down(own_stores, tmp_path) -> None:
    r_proc, _m = own_stores
    port = embedded.free_port()
    dead_mongo = f"mongodb://127.0.0.1:{embedded.free_port()}/"
    env = {**os.environ, "REDIS_URL": r_proc.url, "MONGO_URL": dead_mongo, "G4L_PORT": str(port),
           "G4L_MODELS": "debug"}
    web = subprocess.Popen([sys.executable, "-m", "g4l.web"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
    try:
        embedded.wait_for_port(port, web, 60, "web")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30)
            raise AssertionError("expected a 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503  # the store is down: Service Unavailable, the reason in the body
            body = json.load(exc)
        assert body["status"] == "degraded" and body["mongodb"].startswith("down")
        assert body["redis"] == "live"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=10) as resp:
            assert resp.status == 200
    finally:
        web.terminate()
        web.wait(30)


def test_the_launchers_processes_run_with_the_bounded_allocator(server) -> None:
    """Each g4l process the launcher starts gets its malloc settings (g4l/launcher.py
    MALLOC_ENV: why); the embedded store keeps its own."""
    from test_station_outputs import child_pid

    from g4l.launcher import MALLOC_ENV

    def environ(pid: int) -> dict[str, str]:
        raw = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)

    for module in ("g4l.worker", "g4l.web", "g4l.hls"):
        pid = child_pid(server.proc.pid, module)
        assert pid is not None, module
        env = environ(pid)
        assert {k: env.get(k) for k in MALLOC_ENV} == MALLOC_ENV, (module, env)
    assert MALLOC_ENV == {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "16777216"}


def test_health_shape_and_cors(server) -> None:
    req = urllib.request.Request(server.url + "/health", headers={"Origin": "https://status.example"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.load(resp)
        assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://status.example")
    assert body["status"] == "live"
    assert body["mongodb"] == "live" and body["redis"] == "live" and body["pytorch"].startswith("live")
    assert body["workers"] >= 1 and body["queue_depth"] is not None and "debug" in body["models_loaded"]
    status, ready = server.health("/health/ready")
    assert status == 200 and ready["status"] == "ready"


@pytest.mark.slow
def test_serve_with_embedded_stores_survives_a_restart(tmp_path) -> None:
    """What scripts/serve runs: embedded Redis + store, durable under G4L_DATA_DIR."""
    data = tmp_path / "data"
    data.mkdir()
    first = start_server(data, redis_url=None, mongo_url=None)
    try:
        with DeviceClient(first.url) as c:
            bang = c.bang(make_wav(4), model_name="debug", prompt_duration=4)
    finally:
        assert first.stop() == 0
    # Every process it started is gone.
    out = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True)
    assert out.stdout.strip() == ""
    second = start_server(data, redis_url=None, mongo_url=None)
    try:
        with DeviceClient(second.url) as c:
            status = c.verify(bang.session_id)
            assert status["exists"] and status["version"] == 1
            again = c.continue_(bang.session_id)  # from the audio stored before the restart
            assert wav_info(again.audio).duration == pytest.approx(56, abs=0.05)
    finally:
        second.stop()
