"""The session history as the clients users have walk it, against the running server:
Node's socket.io-client (the device), and a worker killed mid-job and the web process
killed mid-undo, after which the history still agrees with itself and with what each
client received. (The HTTP twins: tests/test_http_api.py; the CLI: tests/test_cli.py.)"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import make_wav, start_server, wait_until, wav_info

from plugin_protocol import events
from plugin_protocol.client import DeviceClient, ProtocolError

DEVICE = Path(__file__).resolve().parent / "device"


def _pids(pattern: str, parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern, "-P", str(parent)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _consistent(c: DeviceClient, session_id: str) -> dict:
    """The history's invariants: one current version, every parent known, numbers unique,
    and the pointer's audio is the current version's."""
    doc = c.history(session_id)
    versions = {v["version"]: v for v in doc["versions"]}
    assert len(versions) == len(doc["versions"])
    assert doc["current"] in versions and [v["current"] for v in doc["versions"]].count(True) == 1
    for v in doc["versions"]:
        assert v["parent"] is None or v["parent"] in versions, v
        assert sorted(v["children"]) == sorted(w["version"] for w in doc["versions"] if w["parent"] == v["version"])
    return doc


def test_node_device_walks_its_history_byte_for_byte(server, tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None and (DEVICE / "node_modules" / "socket.io-client").is_dir()
    (tmp_path / "in.wav").write_bytes(make_wav(30))
    proc = subprocess.run([node, str(DEVICE / "history.mjs"), server.url, str(tmp_path / "in.wav"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = {s["step"]: s for s in map(json.loads, proc.stdout.splitlines())}
    audio = {name: Path(s["file"]).read_bytes() for name, s in steps.items() if "file" in s}
    sid = steps["bang"]["session_id"]
    # Each move answers with the audio the client received when that version was made.
    assert steps["undo1"]["version"] == 2 and audio["undo1"] == audio["continue1"]
    assert steps["undo2"]["version"] == 1 and audio["undo2"] == audio["bang"]
    assert steps["undo1"]["operation"] == "continue" and steps["undo2"]["operation"] == "bang"
    # The branch continued the bang's audio again: as long as the first continue.
    assert wav_info(audio["branch"]).duration == pytest.approx(54.0, abs=0.05)
    assert steps["redo_refused"]["code"] == "NOTHING_TO_REDO" and steps["redo_refused"]["session_id"] == sid
    history = steps["history"]
    tree = {v["version"]: (v["parent"], v["operation"]) for v in history["versions"]}
    assert tree == {1: (None, "bang"), 2: (1, "continue"), 3: (2, "continue"), 4: (1, "continue")}
    assert history["current"] == 4
    assert steps["checkout"]["version"] == 2 and audio["checkout"] == audio["continue1"]
    # The retry redid the first continue (the current version) from ITS input, the bang's audio.
    assert wav_info(audio["retry"]).duration == pytest.approx(54.0, abs=0.05)
    assert audio["retry"] != audio["continue1"]
    assert steps["undo_transform_refused"]["code"] == "NOTHING_TO_UNDO"
    assert steps["undo_transform_refused"]["message"] == "No previous audio found to undo to"
    assert steps["checkout_refused"]["code"] == "VERSION_NOT_FOUND"
    assert steps["status"]["version"] == 5 and steps["status"]["status"] == "idle"
    # Every version's stored file is, byte for byte, what the client received for it.
    with DeviceClient(server.url, timeout=120) as c:
        doc = _consistent(c, sid)
        assert {v["version"]: (v["parent"], v["operation"]) for v in doc["versions"]}[5] == (1, "retry")
        received = {1: audio["bang"], 2: audio["continue1"], 3: audio["continue2"], 4: audio["branch"],
                    5: audio["retry"]}
        for version, sent in received.items():
            assert c.checkout(sid, version).audio == sent, version


@pytest.fixture
def own_server(tmp_path, mongo_server):
    """A server of this test's own (it kills its processes), on the embedded Redis."""
    data = tmp_path / "data"
    data.mkdir()
    s = start_server(data, redis_url=None, mongo_url=mongo_server.url, G4L_MONGO_DB="g4l_history_faults",
                     G4L_HLS_ENABLED="false", G4L_WORKER_DEAD_AFTER_S="3",
                     # Paced (6 s a generation), so the worker is killed while the model runs.
                     G4L_DEBUG_MODEL_RTF="5")
    yield s
    s.stop()


def test_a_killed_worker_and_a_killed_web_process_leave_the_history_consistent(own_server) -> None:
    server = own_server
    with DeviceClient(server.url, timeout=180) as c:
        bang = c.bang(make_wav(8), model_name="debug", prompt_duration=4)
        sid = bang.session_id
        first = c.continue_(sid, bang.audio)
        # A continue whose worker is killed while the model runs: recovery runs it again.
        since = c.mark()
        c.emit(events.CONTINUE_MUSIC, {"session_id": sid, "audio_data": base64.b64encode(
            first.audio).decode(), "model_name": "debug", "prompt_duration": 4})
        c.wait_for(events.PROCESSING_STARTED, since, session_id=sid)
        [worker] = _pids("g4l.worker", server.proc.pid)
        os.kill(worker, signal.SIGKILL)
        _, result = c.wait_for(events.MUSIC_CONTINUED, since, session_id=sid, timeout=180)
        second = base64.b64decode(result["audio_data"])
        doc = _consistent(c, sid)
        made = {v["version"]: v for v in doc["versions"]}
        # One version for the job whatever its attempts, made from the first continue.
        assert [v["operation"] for v in doc["versions"]] == ["bang", "continue", "continue"]
        assert made[doc["current"]]["parent"] == 2
        assert c.checkout(sid, doc["current"]).audio == second
        assert c.checkout(sid, 2).audio == first.audio

        # The web process killed right after an undo was sent: it happened whole or not at all.
        c.emit(events.UNDO, {"session_id": sid})
        [web] = _pids("g4l.web", server.proc.pid)
        os.kill(web, signal.SIGKILL)
        wait_until(lambda: [p for p in _pids("g4l.web", server.proc.pid) if p != web], 30, "a new web process")

        def back() -> dict | None:
            try:
                return c.history(sid)
            except (ProtocolError, TimeoutError, Exception):
                time.sleep(0.5)
                return None

        doc = wait_until(back, 90, "the client to reconnect")
        doc = _consistent(c, sid)
        assert doc["current"] in (1, 2)  # undone (2 -> 1) or not
        assert len(doc["versions"]) == 3
        # The pointer's audio is its version's, and the tree still moves.
        moved = c.checkout(sid, 3)
        assert moved.audio == second and c.undo(sid).audio == first.audio
        assert c.verify(sid)["version"] == 2


def test_bad_history_requests_get_clear_errors_and_change_nothing(client: DeviceClient) -> None:
    sid = client.crop(None, make_wav(2))["session_id"]
    client.crop(sid, make_wav(3, freq=330.0))
    before = client.history(sid)
    bad = [
        (events.CHECKOUT, {"session_id": sid, "version": "x"}, "INVALID_REQUEST"),
        (events.CHECKOUT, {"session_id": sid, "version": 2.5}, "INVALID_REQUEST"),
        (events.CHECKOUT, {"session_id": sid, "version": True}, "INVALID_REQUEST"),
        (events.CHECKOUT, {"session_id": sid, "version": 0}, "INVALID_REQUEST"),
        (events.CHECKOUT, {"session_id": sid}, "INVALID_REQUEST"),
        (events.CHECKOUT, {"session_id": sid, "version": 7}, "VERSION_NOT_FOUND"),
        (events.UNDO, {}, "INVALID_REQUEST"),
        (events.UNDO, {"session_id": "no such id!"}, "INVALID_REQUEST"),
        (events.UNDO, {"session_id": "unknown-session"}, "SESSION_NOT_FOUND"),
        (events.REDO, {"session_id": sid}, "NOTHING_TO_REDO"),
        (events.HISTORY, "not json", "INVALID_REQUEST"),
        (events.UNDO_TRANSFORM, {"session_id": sid}, "NOTHING_TO_UNDO"),
    ]
    for event, payload, code in bad:
        since = client.mark()
        client.emit(event, payload)
        with pytest.raises(ProtocolError) as err:
            client.wait_for(set(), since, timeout=30)
        assert err.value.code == code, (event, payload, err.value.payload)
    assert client.history(sid) == before
    # The same session still moves.
    assert client.undo(sid).version == 1 and client.redo(sid).version == 2
