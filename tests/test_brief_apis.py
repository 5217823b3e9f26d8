"""The three HTTP systems of our brief, driven by their documented calls against the whole
server (API keys on): the realtime HLS API (start, a player attached at once, status,
the result as a real MP4/AAC and a WAV, cleanup), the generative HLS daemon's get_stream
(an absolute URL that gstreamer's ``souphttpsrc ! hlsdemux ! decodebin`` and ffmpeg play;
the same genre reuses its station) and the TellUrStori service (generate, status,
download, and ``WS /ws`` with a stock websocket client)."""

from __future__ import annotations

import io
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf
import websocket
from conftest import RunningServer, start_server, wait_until

from g4l.hls.watch import PlaylistWatcher, decode_ts

KEY_A, KEY_B = "brief-key-a", "brief-key-b"
ONE_SHOT_S = 8.0
A = {"X-API-Key": KEY_A}
B = {"X-API-Key": KEY_B}


@pytest.fixture(scope="module")
def brief(redis_server, mongo_server, tmp_path_factory) -> Iterator[RunningServer]:
    redis_url = re.sub(r"/\d+$", "", redis_server.url) + "/5"
    s = start_server(tmp_path_factory.mktemp("brief"), redis_url=redis_url, mongo_url=mongo_server.url,
                     G4L_MONGO_DB="g4l_brief", G4L_API_KEYS=f"{KEY_A},{KEY_B}",
                     G4L_STREAM_SECONDS=str(ONE_SHOT_S), G4L_STATIONS_PER_KEY="2", G4L_MAX_STATIONS="4")
    yield s
    s.stop()


def ffprobe(data: bytes, suffix: str, tmp: Path) -> dict:
    path = tmp / f"probe{suffix}"
    path.write_bytes(data)
    out = subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


# ---------------------------------------------------------------- realtime HLS API
def test_realtime_api_streams_one_generation_and_keeps_it_as_mp4_and_wav(brief: RunningServer, tmp_path) -> None:
    url = brief.url
    assert requests.post(url + "/api/stream/start", json={"text": "calm piano"}, timeout=10).status_code == 401
    for body, needle in (({"text": "   "}, "text is empty"), ({"text": "rock", "language": "de"}, "language"),
                         ({"text": "rock", "mode": "static"}, "mode"), ({"language": "en"}, "text")):
        bad = requests.post(url + "/api/stream/start", json=body, headers=A, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_REQUEST", bad.text
        assert needle in bad.json()["error"]["message"]

    started = requests.post(url + "/api/stream/start", headers=A, timeout=10,
                            json={"text": "спокойное пианино, дождь", "language": "ru", "mode": "dynamic"})
    assert started.status_code == 200, started.text
    body = started.json()
    sid, playlist = body["session_id"], body["playlist_url"]
    assert body["status"] == "processing" and playlist.startswith("/hls/") and playlist.endswith("/index.m3u8")

    # The player attaches at once: the playlist is served within a moment, before the audio exists.
    watcher = PlaylistWatcher(url + playlist).start()
    try:
        wait_until(lambda: watcher.polls > 0, 15, "the playlist to be served")
        status = wait_until(lambda: (r := requests.get(f"{url}/api/stream/status/{sid}", headers=A, timeout=10)
                                   ).json()["status"] != "processing" and r.json(), 120, "the generation")
        assert status["status"] == "ready", status
        assert status["playlist_url"] == url + playlist  # absolute in the status
        assert status["mp4_url"] == f"{url}/api/stream/{sid}/result.mp4" and status["progress"] == 1.0
        assert status["error"] is None and status["language"] == "ru" and status["finished_at"]

        # The generation's audio reaches the listener (silence before it).
        def audible() -> bool:
            return any(rms(decode_ts(s.data)) > 1e-3 for s in watcher.ordered())
        wait_until(audible, 30, "an audible segment")
    finally:
        watcher.stop()
    assert not [p for p in watcher.problems if "poll failed" in p], watcher.problems[:5]

    mp4 = requests.get(status["mp4_url"], headers=A, timeout=60)
    assert mp4.status_code == 200 and mp4.headers["Content-Type"] == "audio/mp4"
    probe = ffprobe(mp4.content, ".mp4", tmp_path)
    assert "mp4" in probe["format"]["format_name"]
    assert [s["codec_name"] for s in probe["streams"]] == ["aac"]
    assert abs(float(probe["format"]["duration"]) - ONE_SHOT_S) < 0.2
    again = requests.get(status["mp4_url"], headers={**A, "Range": "bytes=0-99"}, timeout=30)
    assert again.status_code == 206 and again.content == mp4.content[:100]  # encoded once, kept

    wav = requests.get(status["wav_url"], headers=A, timeout=30)
    assert wav.status_code == 200
    assert abs(sf.info(io.BytesIO(wav.content)).duration - ONE_SHOT_S) < 0.05

    # Another key sees nothing; the job is the same generation under /api/v1/jobs.
    for path in (f"/api/stream/status/{sid}", f"/api/stream/{sid}/result.mp4", f"/api/stream/{sid}/result.wav"):
        assert requests.get(url + path, headers=B, timeout=10).status_code == 404
    assert requests.post(url + "/api/cleanup", json={"session_id": sid}, headers=B, timeout=10).status_code == 404
    assert requests.get(f"{url}/api/v1/jobs/{sid}", headers=A, timeout=10).json()["status"] == "completed"

    cleaned = requests.post(url + "/api/cleanup", json={"session_id": sid}, headers=A, timeout=10)
    assert cleaned.status_code == 200 and cleaned.json() == {"session_id": sid, "status": "cleaned", "canceled": False}
    assert requests.get(f"{url}/api/stream/status/{sid}", headers=A, timeout=10).status_code == 404
    wait_until(lambda: requests.get(url + playlist, timeout=10).status_code == 404, 15, "the stream to stop")
    assert requests.get(f"{url}/api/v1/jobs/{sid}/audio", headers=A, timeout=10).status_code == 200  # no audio lost
    missing = requests.get(f"{url}/api/stream/status/no-such-stream", headers=A, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"


def test_realtime_streams_per_key_are_capped(brief: RunningServer) -> None:
    url = brief.url
    ids = []
    try:
        for _ in range(4):
            started = requests.post(url + "/api/stream/start", headers=B, json={"text": "ambient pads"}, timeout=10)
            assert started.status_code == 200, started.text
            ids.append(started.json()["session_id"])
        full = requests.post(url + "/api/stream/start", headers=B, json={"text": "one too many"}, timeout=10)
        assert full.status_code == 409 and full.json()["error"]["code"] == "STATIONS_FULL"
        assert requests.post(url + "/api/cleanup", json={"session_id": ids.pop()}, headers=B,
                             timeout=10).status_code == 200
        again = requests.post(url + "/api/stream/start", headers=B, json={"text": "now it fits"}, timeout=10)
        assert again.status_code == 200
        ids.append(again.json()["session_id"])
    finally:
        for sid in ids:
            requests.post(url + "/api/cleanup", json={"session_id": sid}, headers=B, timeout=10)


def test_realtime_cleanup_cancels_a_running_generation(brief: RunningServer) -> None:
    started = requests.post(brief.url + "/api/stream/start", headers=A, timeout=10,
                            json={"text": "long drone", "language": "kk", "duration": 60.0}).json()
    cleaned = requests.post(brief.url + "/api/cleanup", json={"session_id": started["session_id"]}, headers=A,
                            timeout=10).json()
    assert cleaned["canceled"] is True
    job = wait_until(lambda: (j := requests.get(f"{brief.url}/api/v1/jobs/{started['session_id']}", headers=A,
                                              timeout=10).json())["status"] in ("canceled", "completed") and j,
                   30, "the cancel")
    assert job["status"] == "canceled"


# ---------------------------------------------------------------- generative HLS daemon
def get_stream(url: str, headers: dict, **params) -> requests.Response:
    return requests.post(url + "/generative/get_stream", headers=headers, timeout=20,
                         json={"params": {"genre": "rock", "temperature": 3, "adaptive": True, "manual": True,
                                          **params}, "version": "1.0"})


@pytest.mark.skipif(shutil.which("gst-launch-1.0") is None, reason="gstreamer is installed by scripts/install.sh test")
def test_get_stream_plays_in_gstreamer_and_ffmpeg_and_reuses_its_station(brief: RunningServer, tmp_path) -> None:
    url = brief.url
    first = get_stream(url, A)
    assert first.status_code == 200, first.text
    body = first.json()
    stream = body["stream"]
    assert body["status"] == "ok" and body["version"] == "1.0"
    assert stream["url"].startswith(url + "/hls/") and stream["url"].endswith("/index.m3u8")
    assert stream["temperature"] == 1.0 and body["station"]["temperature"] == 1.0 and stream["reused"] is False
    assert len(body["station"]["prompts"]) > 1  # adaptive: a rotation of moods
    try:
        again = get_stream(url, A, genre="  Rock ")
        assert again.json()["stream"]["station_id"] == stream["station_id"] and again.json()["stream"]["reused"]
        assert get_stream(url, A, temperature=5).json()["stream"]["station_id"] != stream["station_id"]
        theirs = get_stream(url, B)
        assert theirs.json()["stream"]["station_id"] != stream["station_id"]  # a key never shares a station
        for bad in ({"temperature": 11}, {"genre": ""}, {"temperature": "hot"}):
            refused = get_stream(url, A, **bad)
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "INVALID_REQUEST"
        full = get_stream(url, A, genre="jazz")  # this key already runs 2 stations
        assert full.status_code == 409 and full.json()["error"]["code"] == "STATIONS_FULL"

        # Wait for the music (the station's first stretch), then play 10 s in gstreamer.
        wait_until(lambda: requests.get(f"{url}/api/v1/stations/{stream['station_id']}", headers=A, timeout=10)
                 .json()["generations"] > 0, 60, "the station's first generation")
        raw = tmp_path / "gst.raw"
        pipeline = (f"souphttpsrc location={stream['url']} ! hlsdemux ! decodebin ! audioconvert ! audioresample ! "
                    f"audio/x-raw,format=S16LE,channels=2,rate=48000 ! filesink location={raw}")
        # Played 12 s, then SIGINT (-e: end of stream, the file is flushed); killed 5 s later
        # if a live hlsdemux does not wind down (filesink has written what it decoded by then).
        gst = subprocess.Popen(["gst-launch-1.0", "-q", "-e", *pipeline.split()], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        time.sleep(12)
        assert gst.poll() is None, f"gstreamer stopped early: {gst.communicate()[1][-2000:]}"
        gst.send_signal(signal.SIGINT)
        try:
            _out, err = gst.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            gst.kill()
            _out, err = gst.communicate()
        proc = subprocess.CompletedProcess(gst.args, gst.returncode, "", err)
        pcm = np.frombuffer(raw.read_bytes(), np.int16).astype(np.float32) / 32768
        assert pcm.size / 2 / 48_000 >= 6.0, f"gstreamer decoded {pcm.size / 96_000:.1f} s; {proc.stderr[-800:]}"
        assert rms(pcm) > 1e-3, "gstreamer played only silence"

        ff = subprocess.run(["ffmpeg", "-v", "error", "-i", stream["url"], "-t", "4", "-f", "s16le", "-ac", "2",
                             "-ar", "48000", "pipe:1"], capture_output=True, timeout=60)
        assert ff.returncode == 0, ff.stderr[-800:]
        assert len(ff.stdout) / 4 / 48_000 >= 3.9
    finally:
        for headers in (A, B):
            for st in requests.get(url + "/api/v1/stations", headers=headers, timeout=10).json()["stations"]:
                requests.delete(f"{url}/api/v1/stations/{st['station_id']}", headers=headers, timeout=10)
    replaced = get_stream(url, A)  # a stopped station is replaced, not returned
    assert replaced.status_code == 200 and replaced.json()["stream"]["station_id"] != stream["station_id"]
    requests.delete(f"{url}/api/v1/stations/{replaced.json()['stream']['station_id']}", headers=A, timeout=10)


# ---------------------------------------------------------------- TellUrStori
def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/ws"


def recv(ws: websocket.WebSocket) -> dict:
    return json.loads(ws.recv())


def test_tellurstori_generate_status_download_and_ws_progress(brief: RunningServer) -> None:
    url = brief.url
    # A stock websocket client; the key in the upgrade request's header.
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(ws_url(url), timeout=10, suppress_origin=True)
    assert refused.value.status_code == 401
    plain = requests.get(url + "/ws", headers=A, timeout=10)
    assert plain.status_code == 400 and "Upgrade" in plain.json()["error"]["message"]

    ws = websocket.create_connection(ws_url(url), header=[f"X-API-Key: {KEY_A}"], timeout=30, suppress_origin=True)
    try:
        assert recv(ws) == {"type": "connected"}
        for raw, code in (("not json", "INVALID_REQUEST"), ('{"type": "subscribe"}', "INVALID_REQUEST"),
                          ('{"type": "subscribe", "job_id": "nope"}', "NOT_FOUND"), ("[1]", "INVALID_REQUEST"),
                          ("[" * 5000, "INVALID_REQUEST")):
            ws.send(raw)
            msg = recv(ws)
            assert msg["type"] == "error" and msg["code"] == code, (raw[:40], msg)
        ws.send('{"type": "ping"}')
        assert recv(ws) == {"type": "pong"}  # the connection survived every bad message

        created = requests.post(url + "/api/v1/generate", headers=A, timeout=10,
                                json={"prompt": "upbeat electronic music with synthesizer and drums",
                                      "duration": 4.0, "temperature": 1.0})
        assert created.status_code == 202, created.text
        job = created.json()
        assert job["status"] == "queued" and job["message"] and job["created_at"].endswith("Z")
        job_id = job["job_id"]
        theirs = requests.post(url + "/api/v1/generate", headers=B, timeout=10, json={"prompt": "x", "duration": 2.0})
        ws.send(json.dumps({"type": "subscribe", "job_id": theirs.json()["job_id"]}))
        assert recv(ws)["code"] == "NOT_FOUND"  # another key's job does not exist for this one

        ws.send(json.dumps({"type": "subscribe", "job_id": job_id}))
        seen = [recv(ws)]
        assert seen[0]["type"] == "subscribed" and seen[0]["job_id"] == job_id
        while seen[-1]["job"]["status"] not in ("completed", "failed", "cancelled"):
            seen.append(recv(ws))
        last = seen[-1]
        assert last["type"] in ("completed", "subscribed") and last["job"]["status"] == "completed", seen
        assert last["job"]["audio_url"] == f"/api/v1/download/{job_id}" and last["job"]["progress"] == 1.0
        statuses = [m["job"]["status"] for m in seen]
        assert statuses[-1] == "completed" and set(statuses) <= {"queued", "processing", "completed"}
    finally:
        ws.close()

    # A job that has already ended: subscribed, then how it ended (a client waiting for it hears it).
    late = websocket.create_connection(ws_url(url), header=[f"X-API-Key: {KEY_A}"], timeout=30, suppress_origin=True)
    try:
        assert recv(late) == {"type": "connected"}
        late.send(json.dumps({"type": "subscribe", "job_id": job_id}))
        first, second = recv(late), recv(late)
        assert first["type"] == "subscribed" and second["type"] == "completed"
        assert second["job"]["file_size"] > 0
    finally:
        late.close()
    # At most 16 open connections per key and web process.
    held = [websocket.create_connection(ws_url(url), header=[f"X-API-Key: {KEY_B}"], timeout=30,
                                        suppress_origin=True) for _ in range(16)]
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as crowded:
            websocket.create_connection(ws_url(url), header=[f"X-API-Key: {KEY_B}"], timeout=10,
                                        suppress_origin=True)
        assert crowded.value.status_code == 429
    finally:
        for conn in held:
            conn.close()

    status = requests.get(f"{url}/api/v1/status/{job_id}", headers=A, timeout=10).json()
    assert status["status"] == "completed" and status["progress"] == 1.0 and status["duration"] == 4.0
    assert status["audio_url"] == f"/api/v1/download/{job_id}" and status["message"] and status["file_size"] > 0
    assert requests.get(f"{url}/api/v1/status/{job_id}", headers=B, timeout=10).status_code == 404
    audio = requests.get(url + status["audio_url"], headers=A, timeout=30)
    assert audio.status_code == 200 and len(audio.content) == status["file_size"]
    assert abs(sf.info(io.BytesIO(audio.content)).duration - 4.0) < 0.05
    assert requests.get(url + status["audio_url"], headers=B, timeout=10).status_code == 404
    # The rest of that service's routes are ours.
    listed = requests.get(url + "/api/v1/jobs", headers=A, timeout=10).json()
    assert job_id in [j["job_id"] for j in listed["jobs"]]
    built = requests.post(url + "/api/v1/prompt/build", headers=A, timeout=10, json={"genre": "electronic"})
    assert built.status_code == 200 and "electronic" in built.json()["structured_prompt"]
    for path in ("/health", "/health/ready", "/health/live"):
        assert requests.get(url + path, timeout=10).status_code == 200
    requests.delete(f"{url}/api/v1/jobs/{theirs.json()['job_id']}", headers=B, timeout=10)
