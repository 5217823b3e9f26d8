"""Faults the launcher rides out (what ``scripts/serve`` runs, embedded stores included):
the embedded Redis killed (restarted on its port from its append-only file: sessions and
audio are still there, the worker waits instead of crash-looping), Redis paused while a
job is in flight (the job finishes, nobody is taken for dead), and the web process killed
(restarted; clients reconnect)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time

import pytest
from conftest import RunningServer, make_wav, start_server, wait_until, wav_info

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
