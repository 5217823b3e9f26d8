"""The HTTP API as a Swift DAW client uses it: generate, poll, download, cancel, list; the
session twins of the device events; API keys, ownership, rate limits, CORS; errors that
are always 4xx JSON with a stable code; and a schemathesis contract test of every route
against the served OpenAPI document.

One server with API keys runs for this module, on its own Redis database and MongoDB
database so that no other test's worker takes its jobs. Each test uses its own key, so
rate limits and job lists do not interfere.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time

import pytest
import requests
import soundfile as sf

from conftest import make_wav, start_server
from g4l import wav_splice

KEYS = {"story": "key-story-1", "other": "key-other-2", "flood": "key-flood-3", "contract": "key-contract-4",
        "sessions": "key-sessions-5", "live": "key-live-6", "errors": "key-errors-7", "stations": "key-stations-8",
        "fuzz": "key-fuzz-10", "fuzz-other": "key-fuzz-other-11", "history": "key-history-12",
        "import": "key-import-13", "sampling": "key-sampling-14", "sampling-ok": "key-sampling-ok-15",
        "terry": "key-terry-16"}
OPERATOR_KEY = "key-operator-9"
RATE_LIMIT = 6
MAX_SECONDS = 90
#: The CORS allowlist also guards Socket.IO, and websocket-client always sends an Origin
#: (its own host), so the live test uses the polling transport (no Origin, like native apps).


@pytest.fixture(scope="module")
def api(redis_server, mongo_server, tmp_path_factory):
    redis_url = re.sub(r"/\d+$", "", redis_server.url) + "/3"
    s = start_server(tmp_path_factory.mktemp("http-api"), redis_url=redis_url, mongo_url=mongo_server.url,
                     G4L_MONGO_DB="g4l_http", G4L_API_KEYS=",".join(KEYS.values()),
                     G4L_RATE_LIMIT_PER_MINUTE=str(RATE_LIMIT), G4L_MAX_GENERATE_SECONDS=str(MAX_SECONDS),
                     G4L_MAX_PAYLOAD_MB="4", G4L_CORS_ORIGINS="https://daw.example", G4L_OPERATOR_KEYS=OPERATOR_KEY,
                     G4L_STATIONS_PER_KEY="2", G4L_MAX_STATIONS="4")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def files_db(mongo_server):
    import pymongo

    client = pymongo.MongoClient(mongo_server.url)
    yield client["g4l_http"]["audio.files"]
    client.close()


class OpenApiClient:
    """A client that knows nothing but the server's URL, a key and the OpenAPI document:
    operations are found by operationId, as a generated Swift client would."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.http = requests.Session()
        self.http.headers["X-API-Key"] = key
        resp = self.http.get(base + "/api/v1/openapi.json", timeout=10)
        resp.raise_for_status()
        self.doc = resp.json()
        self.ops = {op["operationId"]: (method, path)
                    for path, item in self.doc["paths"].items() for method, op in item.items()}

    def call(self, operation_id: str, body: dict | None = None, headers: dict | None = None,
             **params: str) -> requests.Response:
        method, path = self.ops[operation_id]
        url = self.base + re.sub(r"{(\w+)}", lambda m: params.pop(m.group(1)), path)
        return self.http.request(method.upper(), url, json=body, params=params or None, headers=headers,
                                 timeout=30)

    def get_link(self, link: str) -> requests.Response:
        """Follow a link the server handed out."""
        return self.http.get(self.base + link, timeout=30)

    def wait(self, job_id: str, until: tuple[str, ...], timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.call("getJob", job_id=job_id).json()
            if job["status"] in until or time.monotonic() > deadline:
                return job
            time.sleep(0.1)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _wav_seconds(data: bytes) -> tuple[float, int, int]:
    info = sf.info(io.BytesIO(data))
    return info.frames / info.samplerate, info.samplerate, info.channels


# ---------------------------------------------------------------- the checked story
def test_generate_poll_download_then_cancel_running_job(api, files_db):
    c = OpenApiClient(api.url, KEYS["story"])
    assert c.doc["openapi"] == "3.1.0"

    # Generate from a prompt, poll to completion, download a readable WAV of that length.
    resp = c.call("createGenerateJob", {"prompt": "dark drum and bass, 174 bpm", "duration": 4, "seed": 7})
    assert resp.status_code == 202, resp.text
    accepted = resp.json()
    assert accepted["status"] == "queued" and accepted["position"] >= 0 and accepted["created_at"]
    job_id = accepted["job_id"]
    job = c.wait(job_id, ("completed", "failed", "canceled"))
    assert job["status"] == "completed", job
    assert job["progress"] == 1.0 and job["audio_url"] == f"/api/v1/jobs/{job_id}/audio"
    wav = c.http.get(api.url + job["audio_url"], timeout=30)
    assert wav.status_code == 200 and wav.headers["Content-Type"] == "audio/wav"
    assert int(wav.headers["Content-Length"]) == len(wav.content)
    seconds, rate, _ = _wav_seconds(wav.content)
    assert abs(seconds - 4.0) < 1e-3 and rate == 32000
    # A resumed download: byte ranges.
    part = c.call("getJobAudio", job_id=job_id, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == wav.content[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(wav.content)}"
    tail = c.call("getJobAudio", job_id=job_id, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == wav.content[-10:]
    bad = c.call("getJobAudio", job_id=job_id, headers={"Range": f"bytes={len(wav.content) + 5}-"})
    assert bad.status_code == 416 and bad.json()["error"]["code"] == "RANGE_NOT_SATISFIABLE"

    # From audio: the result keeps the audio's rate and channels and is `duration` long.
    resp = c.call("createGenerateJob", {"audio": _b64(make_wav(3.0, rate=44100, channels=2)), "duration": 5,
                                        "prompt_duration": 2})
    assert resp.status_code == 202, resp.text
    audio_job_id = resp.json()["job_id"]
    job = c.wait(audio_job_id, ("completed", "failed", "canceled"))
    assert job["status"] == "completed", job
    seconds, rate, channels = _wav_seconds(c.call("getJobAudio", job_id=job["job_id"]).content)
    assert (rate, channels) == (44100, 2) and abs(seconds - 5.0) < 1e-3

    # A long job runs; with batching (the shipped G4L_MAX_BATCH, 8) a short one runs beside
    # it instead of waiting (one at a time it waits: tests/test_one_at_a_time.py).
    long_id = c.call("createGenerateJob", {"prompt": "long", "duration": MAX_SECONDS}).json()["job_id"]
    deadline = time.monotonic() + 60
    while True:
        job = c.call("getJob", job_id=long_id).json()
        if job["status"] == "running" and job["progress"] > 0:
            break
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    next_id = c.call("createGenerateJob", {"prompt": "next", "duration": 2}).json()["job_id"]
    assert c.wait(next_id, ("completed", "failed"))["status"] == "completed"
    assert c.call("getJob", job_id=long_id).json()["status"] == "running"

    # Cancel the running one: canceled within 2 s.
    started = time.monotonic()
    resp = c.call("cancelJob", job_id=long_id)
    while c.call("getJob", job_id=long_id).json()["status"] != "canceled":
        assert time.monotonic() - started < 2.0, "the running job did not stop within 2 s"
        time.sleep(0.02)
    latency = time.monotonic() - started
    print(f"cancel latency of a running job: {latency:.3f} s")
    assert resp.status_code in (200, 202)
    # Nothing was stored for the canceled job, and it has no audio.
    assert files_db.count_documents({"metadata.job_id": long_id, "metadata.kind": "output"}) == 0
    gone = c.call("getJobAudio", job_id=long_id)
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "NOT_READY"

    # The caller's jobs, newest first, paged.
    page = c.call("listJobs", limit="2").json()
    assert page["total"] == 4 and len(page["jobs"]) == 2 and page["next_offset"] == 2
    assert [j["job_id"] for j in page["jobs"]] == [next_id, long_id]
    rest = c.call("listJobs", limit="10", offset="2").json()
    assert [j["job_id"] for j in rest["jobs"]] == [audio_job_id, job_id] and rest["next_offset"] is None


def test_prompt_builder(api):
    c = OpenApiClient(api.url, KEYS["story"])
    resp = c.call("buildPrompt", {"genre": "drum and bass", "tempo": 174, "mood": "dark",
                                  "instruments": ["reese bass", "Reese  Bass", "amen break"],
                                  "artist_style": "Noisia"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["structured_prompt"] == "dark drum and bass, 174 bpm, reese bass, amen break, in the style of Noisia"
    assert body["components"]["instruments"] == ["reese bass", "amen break"]
    assert c.call("buildPrompt", {}).json()["structured_prompt"] == ""


# ---------------------------------------------------------------- sessions over HTTP
def _poll_session(c: OpenApiClient, session_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = c.call("pollSession", session_id=session_id).json()
        if not state["generation_in_progress"] or time.monotonic() > deadline:
            return state
        assert state["audio_data"] is None
        time.sleep(0.2)


def test_session_twins_bang_continue_retry_crop_cleanup(api):
    c = OpenApiClient(api.url, KEYS["sessions"])
    resp = c.call("bangSession", {"audio_data": _b64(make_wav(8.0, rate=48000)), "prompt_duration": 4,
                                  "description": "lofi", "top_k": 200})
    assert resp.status_code == 202, resp.text
    sid = resp.json()["session_id"]
    assert resp.json()["queue_status"]["session_id"] == sid
    state = _poll_session(c, sid)
    assert state["status"] == "idle" and state["error"] is None and state["progress"] == 100
    assert state["parameters"]["top_k"] == 200 and state["parameters"]["prompt_duration"] == 4
    assert state["model_name"] == "debug"
    seconds, rate, _ = _wav_seconds(base64.b64decode(state["audio_data"]))
    assert rate == 48000 and abs(seconds - 30.0) < 0.01

    # Continue the stored audio: the file grows by 30 - prompt seconds.
    assert c.call("continueSession", {}, session_id=sid).status_code == 202
    state = _poll_session(c, sid)
    after_continue = base64.b64decode(state["audio_data"])
    assert abs(_wav_seconds(after_continue)[0] - 56.0) < 0.01
    # Retry redoes that continue from the same input (same length again).
    busy = c.call("retrySession", {}, session_id=sid)
    assert busy.status_code == 202
    again = c.call("continueSession", {}, session_id=sid)
    assert again.status_code == 409 and again.json()["error"]["code"] == "BUSY"
    state = _poll_session(c, sid)
    assert abs(_wav_seconds(base64.b64decode(state["audio_data"]))[0] - 56.0) < 0.01
    # Continue with the audio sent along: read back at once (GridFS may not have it yet),
    # the kept part is the sent file's own bytes.
    sent = make_wav(10.0, rate=48000)
    assert c.call("continueSession", {"audio_data": _b64(sent)}, session_id=sid).status_code == 202
    state = _poll_session(c, sid)
    grown = base64.b64decode(state["audio_data"])
    assert abs(_wav_seconds(grown)[0] - 36.0) < 0.01
    kept = (10 - 4) * 48000 * 2 * 2
    (sent_at, _), (grown_at, _) = wav_splice.data_span(sent), wav_splice.data_span(grown)
    assert grown[grown_at:grown_at + kept] == sent[sent_at:sent_at + kept]
    # Crop: the given audio becomes current; download it back as a file.
    cropped = make_wav(8.0, rate=48000)
    assert c.call("cropSession", {"audio_data": _b64(cropped)}, session_id=sid).status_code == 200
    assert c.call("getSessionAudio", session_id=sid).content == cropped
    assert c.call("pollSession", session_id=sid, include_audio="false").json()["audio_data"] is None
    # A session made from audio alone, then continued.
    made = c.call("createSession", {"audio_data": _b64(make_wav(5.0))})
    assert made.status_code == 201
    # Cleanup: the session is gone.
    assert c.call("cleanupSession", session_id=sid).status_code == 200
    gone = c.call("pollSession", session_id=sid)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "SESSION_NOT_FOUND"
    assert c.call("cleanupSession", session_id=made.json()["session_id"]).status_code == 200


def test_session_history_over_http(api):
    """bang, continue, continue, undo, undo, continue (a branch), redo refused, checkout of
    the first continue, retry: every answer's audio is what the client got at that version."""
    c = OpenApiClient(api.url, KEYS["history"])
    got: dict[int, bytes] = {}

    def run(op: str, body: dict, **params: str) -> tuple[str, bytes]:
        resp = c.call(op, body, **params)
        assert resp.status_code == 202, resp.text
        state = _poll_session(c, resp.json()["session_id"])
        assert state["status"] == "idle" and state["error"] is None, state
        got[state["version"]] = base64.b64decode(state["audio_data"])
        return state["session_id"], got[state["version"]]

    sid, bang = run("bangSession", {"audio_data": _b64(make_wav(8.0)), "prompt_duration": 4})
    _, first = run("continueSession", {}, session_id=sid)
    run("continueSession", {}, session_id=sid)
    for expect, audio in ((2, first), (1, bang)):
        moved = c.call("undoSession", session_id=sid)
        assert moved.status_code == 200, moved.text
        assert moved.json()["version"]["version"] == expect and moved.json()["version"]["current"] is True
        assert c.call("getSessionAudio", session_id=sid).content == audio
        assert c.get_link(moved.json()["links"]["audio"]).content == audio
    refused = c.call("undoSession", session_id=sid)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "NOTHING_TO_UNDO"
    _, branch = run("continueSession", {}, session_id=sid)                     # v4 <- v1
    refused = c.call("redoSession", session_id=sid)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "NOTHING_TO_REDO"
    tree = c.call("getSessionHistory", session_id=sid).json()
    assert tree["current"] == 4
    assert {v["version"]: (v["parent"], v["operation"]) for v in tree["versions"]} == {
        1: (None, "bang"), 2: (1, "continue"), 3: (2, "continue"), 4: (1, "continue")}
    assert tree["versions"][0]["children"] == [2, 4] and tree["versions"][0]["params"]["prompt_seconds"] == 4
    assert c.call("checkoutVersion", session_id=sid, version="2").json()["version"]["version"] == 2
    assert c.call("getSessionAudio", session_id=sid).content == first
    # Retry redoes the first continue from its input (the bang's audio): a sibling of it.
    _, retried = run("retrySession", {}, session_id=sid)
    assert c.call("pollSession", session_id=sid).json()["version"] == 5
    assert retried != first and _wav_seconds(retried)[0] == _wav_seconds(first)[0]
    tree = c.call("getSessionHistory", session_id=sid).json()
    assert {v["version"]: v["parent"] for v in tree["versions"]}[5] == 1
    # Every version's file, byte for byte what the client got; a Range of one too.
    assert got.keys() == {1, 2, 3, 4, 5} and got[4] == branch
    for version, audio in got.items():
        assert c.call("getVersionAudio", session_id=sid, version=str(version)).content == audio, version
    part = c.call("getVersionAudio", session_id=sid, version="2", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == first[:100]
    # Bad input: a clear error, nothing changed.
    for version, status, code in (("0", 400, "INVALID_REQUEST"), ("x1", 400, "INVALID_REQUEST"),
                                  ("99", 404, "VERSION_NOT_FOUND")):
        resp = c.call("checkoutVersion", session_id=sid, version=version)
        assert resp.status_code == status and resp.json()["error"]["code"] == code, resp.text
        resp = c.call("getVersionAudio", session_id=sid, version=version)
        assert resp.status_code == status and resp.json()["error"]["code"] == code, resp.text
    other = OpenApiClient(api.url, KEYS["other"])
    for op in ("undoSession", "redoSession", "getSessionHistory"):
        resp = other.call(op, session_id=sid)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "SESSION_NOT_FOUND", op
    assert other.call("getVersionAudio", session_id=sid, version="1").status_code == 404
    assert other.call("checkoutVersion", session_id=sid, version="1").status_code == 404
    assert c.call("getSessionHistory", session_id=sid).json() == tree


def test_a_text_to_audio_job_imported_into_a_session_is_a_version_undo_leaves(api):
    c = OpenApiClient(api.url, KEYS["import"])
    job_id = c.call("createGenerateJob", {"prompt": "warm pads", "duration": 4, "seed": 11}).json()["job_id"]
    assert c.wait(job_id, ("completed", "failed"))["status"] == "completed"
    made = c.call("getJobAudio", job_id=job_id).content
    # A new session from it: version 1, operation generate, the job's parameters.
    resp = c.call("importJobAsSession", {"job_id": job_id})
    assert resp.status_code == 201, resp.text
    sid = resp.json()["session_id"]
    assert c.call("getSessionAudio", session_id=sid).content == made
    [v1] = c.call("getSessionHistory", session_id=sid).json()["versions"]
    assert v1["operation"] == "generate" and v1["params"]["seed"] == 11 and v1["params"]["job_id"] == job_id
    # Into a session that has audio: a new version from the current one; undo gives it back.
    crop = make_wav(3.0)
    assert c.call("cropSession", {"audio_data": _b64(crop)}, session_id=sid).status_code == 200
    assert c.call("importJob", {"job_id": job_id}, session_id=sid).status_code == 200
    tree = c.call("getSessionHistory", session_id=sid).json()
    assert [(v["version"], v["parent"], v["operation"]) for v in tree["versions"]] == [
        (1, None, "generate"), (2, 1, "crop"), (3, 2, "generate")]
    assert c.call("getSessionAudio", session_id=sid).content == made
    assert c.call("undoSession", session_id=sid).json()["version"]["version"] == 2
    assert c.call("getSessionAudio", session_id=sid).content == crop
    # Refusals change nothing: another key's job, an unknown job, a session job.
    other = OpenApiClient(api.url, KEYS["other"])
    resp = other.call("importJobAsSession", {"job_id": job_id})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "NOT_FOUND"
    resp = c.call("importJob", {"job_id": "no-such-job"}, session_id=sid)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "NOT_FOUND"
    assert c.call("getSessionHistory", session_id=sid).json()["current"] == 2


# ---------------------------------------------------------------- live progress
def test_socket_subscribers_get_job_and_session_events(api):
    import socketio

    c = OpenApiClient(api.url, KEYS["live"])
    refused = socketio.Client(reconnection=False)
    why: list = []
    refused.on("connect_error", lambda data=None: why.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        refused.connect(api.url, transports=["polling"], auth={"api_key": "wrong"}, wait_timeout=10)
    assert why and why[0]["data"]["code"] == "UNAUTHORIZED", why

    sio = socketio.Client(reconnection=False)
    got: list[tuple[str, dict]] = []
    done = threading.Event()
    for name in ("job_update", "job_completed", "subscribed", "error", "progress_update", "audio_processed"):
        sio.on(name, (lambda n: lambda data=None: (got.append((n, data)),
                                                     done.set() if n in ("job_completed", "audio_processed")
                                                     else None))(name))
    sio.connect(api.url, transports=["polling"], auth={"api_key": KEYS["live"]}, wait_timeout=10)
    try:
        job_id = c.call("createGenerateJob", {"prompt": "x", "duration": 20}).json()["job_id"]
        ack = sio.call("subscribe", {"job_id": job_id}, timeout=10)
        assert ack == {"job_id": job_id}
        assert done.wait(60), got
        updates = [d for n, d in got if n == "job_update"]
        assert updates and all(u["job_id"] == job_id for u in updates)
        assert any(u["status"] == "running" for u in updates)
        completed = [d for n, d in got if n == "job_completed"][0]
        assert completed["audio_url"] == f"/api/v1/jobs/{job_id}/audio"
        # Another key's socket cannot see this job.
        other = socketio.Client(reconnection=False)
        errors: list[dict] = []
        other.on("error", lambda data: errors.append(data))
        other.connect(api.url, transports=["polling"], auth={"api_key": KEYS["other"]}, wait_timeout=10)
        other.emit("subscribe", {"job_id": job_id})
        deadline = time.monotonic() + 10
        while not errors and time.monotonic() < deadline:
            time.sleep(0.05)
        other.disconnect()
        assert errors and errors[0]["code"] == "NOT_FOUND"

        # A session subscriber gets the device's events.
        got.clear()
        done.clear()
        sid = c.call("bangSession", {"audio_data": _b64(make_wav(4.0)), "prompt_duration": 2}).json()["session_id"]
        assert sio.call("subscribe", {"session_id": sid}, timeout=10) == {"session_id": sid}
        assert done.wait(60), got
        result = [d for n, d in got if n == "audio_processed"][0]
        assert result["session_id"] == sid and base64.b64decode(result["audio_data"])[:4] == b"RIFF"
    finally:
        sio.disconnect()


# ---------------------------------------------------------------- access control
def test_keys_are_required_and_jobs_are_private(api):
    owner = OpenApiClient(api.url, KEYS["other"])
    job_id = owner.call("createGenerateJob", {"prompt": "mine", "duration": 2}).json()["job_id"]
    sid = owner.call("createSession", {"audio_data": _b64(make_wav(2.0))}).json()["session_id"]

    anonymous = requests.Session()
    assert anonymous.get(api.url + "/health/live").status_code == 200
    assert anonymous.get(api.url + "/api/v1/openapi.json").status_code == 401
    assert anonymous.get(api.url + "/api/v1/docs/").status_code == 401
    for path, item in owner.doc["paths"].items():
        url = api.url + path.replace("{job_id}", job_id).replace("{session_id}", sid)
        for method in item:
            for headers in ({}, {"X-API-Key": "not-a-key"}):
                resp = anonymous.request(method.upper(), url, json={}, headers=headers, timeout=10)
                assert resp.status_code == 401, (method, path, resp.text)
                assert resp.json()["error"]["code"] == "UNAUTHORIZED"

    stranger = OpenApiClient(api.url, KEYS["story"])
    for op in ("getJob", "cancelJob", "getJobAudio"):
        resp = stranger.call(op, job_id=job_id)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "NOT_FOUND", op
    assert job_id not in {j["job_id"] for j in stranger.call("listJobs", limit="100").json()["jobs"]}
    for op, body in (("pollSession", None), ("continueSession", {}), ("cropSession", {"audio_data": _b64(make_wav(1))}),
                     ("cleanupSession", None), ("getSessionAudio", None)):
        resp = stranger.call(op, body, session_id=sid)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "SESSION_NOT_FOUND", op
    # A listen link is the session's too: a stranger cannot get one.
    link = requests.post(f"{api.url}/api/v1/sessions/{sid}/listen", headers={"X-API-Key": KEYS["story"]}, timeout=10)
    assert link.status_code == 404 and link.json()["error"]["code"] == "SESSION_NOT_FOUND"
    mine = requests.post(f"{api.url}/api/v1/sessions/{sid}/listen", headers={"X-API-Key": KEYS["other"]}, timeout=10)
    assert mine.status_code == 200 and mine.json()["playlist_url"].startswith("/hls/")
    # The owner still has both.
    assert owner.call("getJob", job_id=job_id).status_code == 200
    assert owner.call("pollSession", session_id=sid).status_code == 200
    owner.call("cancelJob", job_id=job_id)


def test_stations_belong_to_their_key_which_has_a_quota_and_only_operators_stop_every_stream(api):
    mine, other = OpenApiClient(api.url, KEYS["stations"]), OpenApiClient(api.url, KEYS["story"])
    operator = OpenApiClient(api.url, OPERATOR_KEY)
    ops = set(mine.ops)
    assert {"createStation", "listStations", "getStation", "stopStation", "getSessionListenLink",
            "stopIdleStreams"} <= ops
    first = mine.call("createStation", {"prompt": "lofi beats", "model": "debug"})
    assert first.status_code == 201, first.text
    station_id = first.json()["station_id"]
    # Another key: the station does not exist, to read or to stop.
    for op in ("getStation", "stopStation"):
        resp = other.call(op, station_id=station_id)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "STATION_NOT_FOUND", op
    assert station_id not in {s["station_id"] for s in other.call("listStations").json()["stations"]}
    status = mine.call("getStation", station_id=station_id).json()
    assert status["status"] == "running" and status["prompts"] == ["lofi beats"]
    assert [s["station_id"] for s in mine.call("listStations").json()["stations"]] == [station_id]

    # The per-key quota (2 here) holds; other keys still have their slots.
    second = mine.call("createStation", {"genre": "ambient", "model": "debug"}).json()["station_id"]
    third = mine.call("createStation", {"prompts": ["jazz", "funk"], "rotate_every_s": 30})
    assert third.status_code == 409 and third.json()["error"]["code"] == "STATIONS_FULL", third.text
    theirs = other.call("createStation", {"prompt": "techno"})
    assert theirs.status_code == 201, theirs.text

    # Bodies are validated by the same machinery as every /api/v1 route: types, ranges, 64 KB.
    for body, code in (({"prompt": 5}, 400), ({"prompt": "x", "temperature": 99}, 400),
                       ({"prompt": "x", "model": "nope/nope"}, 400), ({"prompt": "x" * 100_000}, 413),
                       ({"prompt": "x", "rotate_every_s": 3}, 400), ({}, 400)):
        resp = mine.call("createStation", body)
        assert resp.status_code == code, (body, resp.text)

    # Stopping every idle stream is an operator's call.
    refused = mine.call("stopIdleStreams", {"max_idle_s": 0})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "FORBIDDEN"
    assert mine.call("getStation", station_id=station_id).json()["status"] == "running"
    assert operator.call("stopIdleStreams", {"max_idle_s": 1e6}).json() == {"stopped": []}

    for client, sid in ((mine, station_id), (mine, second), (other, theirs.json()["station_id"])):
        stopped = client.call("stopStation", station_id=sid)
        assert stopped.status_code == 200 and stopped.json() == {"station_id": sid, "status": "stopped"}
    assert mine.call("listStations").json()["stations"] == []


def test_cors_allowlist(api):
    pre = requests.options(api.url + "/api/v1/generate", headers={
        "Origin": "https://daw.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type"}, timeout=10)
    assert pre.status_code == 200
    assert pre.headers["Access-Control-Allow-Origin"] == "https://daw.example"
    assert "x-api-key" in pre.headers["Access-Control-Allow-Headers"].lower()
    evil = requests.options(api.url + "/api/v1/generate", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in evil.headers


def test_flooding_generate_is_rate_limited(api):
    c = OpenApiClient(api.url, KEYS["flood"])
    answers = [c.call("createGenerateJob", {"prompt": "flood", "duration": 2}) for _ in range(RATE_LIMIT + 6)]
    accepted = [a for a in answers if a.status_code == 202]
    limited = [a for a in answers if a.status_code == 429]
    assert len(accepted) == RATE_LIMIT and len(limited) == 6
    for a in limited:
        assert a.json()["error"]["code"] == "RATE_LIMITED"
        assert 1 <= int(a.headers["Retry-After"]) <= 61
    # The queue holds no more of this key's jobs than the limit allows.
    assert c.call("listJobs", limit="100").json()["total"] == RATE_LIMIT
    for a in accepted:
        c.call("cancelJob", job_id=a.json()["job_id"])


# ---------------------------------------------------------------- bad input
def test_bad_input_is_always_a_json_4xx(api):
    c = OpenApiClient(api.url, KEYS["errors"])
    h = c.http

    def check(resp: requests.Response, status: int, code: str) -> None:
        assert resp.status_code == status, resp.text
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.json()["error"]["code"] == code

    posts = [(m, p) for p, item in c.doc["paths"].items() for m, op in item.items() if "requestBody" in op]
    for method, path in posts:
        url = api.url + path.replace("{session_id}", "no-such-session")
        check(h.request(method, url, data="{not json", timeout=10), 400, "INVALID_REQUEST")
        check(h.request(method, url, data="[1, 2]", timeout=10), 400, "INVALID_REQUEST")
        if c.doc["paths"][path][method]["requestBody"]["required"]:  # else an empty body means defaults
            check(h.request(method, url, data="", timeout=10), 400, "INVALID_REQUEST")
        check(h.request(method, url, data=b"\xff\xfe", timeout=10), 400, "INVALID_REQUEST")
        check(h.request(method, url, data="x" * (5 * 1024 * 1024), timeout=30), 413, "TOO_LARGE")
    for body in ({"duration": "10"}, {"duration": 10, "top_k": 1.5}, {"duration": None}, {"duration": 0},
                 {"duration": MAX_SECONDS + 1}, {"duration": 10, "prompt": 5}, {"duration": 10, "seed": -1},
                 {"prompt": "no duration"}, {"duration": 10, "temperature": 0}):
        check(c.call("createGenerateJob", body), 400, "INVALID_REQUEST")
    check(c.call("createGenerateJob", {"duration": 10, "model": "facebook/musicgen-large"}), 400,
          "MODEL_NOT_ALLOWED")
    check(c.call("createGenerateJob", {"duration": 10, "audio": "not base64!"}), 400, "INVALID_AUDIO")
    check(c.call("createGenerateJob", {"duration": 2, "audio": _b64(make_wav(4.0))}), 400, "INVALID_REQUEST")
    check(c.call("buildPrompt", {"instruments": "piano"}), 400, "INVALID_REQUEST")
    check(c.call("buildPrompt", {"genre": "x" * 70_000}), 413, "TOO_LARGE")
    check(c.call("listJobs", limit="lots"), 400, "INVALID_REQUEST")
    check(c.call("listJobs", limit="0"), 400, "INVALID_REQUEST")
    for op in ("getJob", "cancelJob", "getJobAudio"):
        for bad in ("0" * 32, "../../etc", "x" * 300):
            check(c.call(op, job_id=bad), 404, "NOT_FOUND")
    for op in ("pollSession", "cleanupSession", "getSessionAudio"):
        check(c.call(op, session_id="no-such-session"), 404, "SESSION_NOT_FOUND")
    check(c.call("retrySession", {}, session_id="bad id!"), 404, "SESSION_NOT_FOUND")
    check(h.get(api.url + "/api/v1/nowhere", timeout=10), 404, "NOT_FOUND")
    check(h.put(api.url + "/api/v1/generate", json={}, timeout=10), 405, "METHOD_NOT_ALLOWED")


def test_every_api_route_is_in_the_document():
    from g4l.settings import Settings
    from g4l.web.api.openapi import undocumented
    from g4l.web.app import create_app

    web = create_app(Settings(redis_url="redis://127.0.0.1:1/0", mongo_url="mongodb://127.0.0.1:1/",
                              models=["debug"]))
    ours = {rule.rule for rule in web.app.url_map.iter_rules() if rule.endpoint.startswith("api_")}
    assert ours, "no API routes registered"
    missing = [m for m in undocumented(web.app) if m.split(" ", 1)[1] in ours]
    assert missing == [], f"routes missing from the OpenAPI document: {missing}"


# ---------------------------------------------------------------- contract (schemathesis)
CONTRACT_EXAMPLES = 12


def test_contract_every_route_against_the_document(api):
    """schemathesis generates valid and invalid requests for every operation of the served
    document and checks each answer against it: documented status and content type,
    response schema, required headers (Retry-After on 429), never a 5xx, invalid input
    refused, auth enforced."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    headers = {"X-API-Key": KEYS["contract"]}
    schema = schemathesis.openapi.from_url(api.url + "/api/v1/openapi.json", headers=headers)
    failures: list[str] = []
    statuses: list[int] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=CONTRACT_EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def run(case):
                # positive_data_acceptance is off: a schema-valid body can still be refused for
                # what no schema says (random base64 is not a WAV; a retry needs a continue).
                resp = case.call_and_validate(base_url=api.url, headers=headers,
                                              excluded_checks=[positive_data_acceptance])
                statuses.append(resp.status_code)

            try:
                run()
            except Exception as exc:  # collect every operation's failure, then report them all
                failures.append(f"{op.label} [{mode.value}]: {str(exc)[:1500]}")
    # Leave no job or station of this run behind: it made real generation requests.
    c = OpenApiClient(api.url, KEYS["contract"])
    for job in c.call("listJobs", limit="100").json()["jobs"]:
        c.call("cancelJob", job_id=job["job_id"])
    for station in c.call("listStations").json()["stations"]:
        c.call("stopStation", station_id=station["station_id"])
    assert not failures, "\n\n".join(failures)
    print(f"contract: {len(statuses)} calls, statuses {sorted(set(statuses))}")
    assert len(statuses) >= 10 * len(operations) and any(200 <= s < 300 for s in statuses)


def test_one_sampling_contract_on_every_route(api):
    """The same out-of-range sampling value is refused the same way by the device socket,
    /api/v1 (sessions, jobs, stations) and the JUCE route; the widest in-range values are
    accepted by all of them (plugin_protocol/sampling.py)."""
    import socketio

    wav = _b64(make_wav(2.0))
    bang = {"audio_data": wav, "model_name": "debug", "prompt_duration": 1}
    routes = {
        "socket": None,
        "bangSession": ("/api/v1/sessions/bang", {**bang}),
        "createGenerateJob": ("/api/v1/generate", {"prompt": "x", "duration": 8}),
        "createStation": ("/api/v1/stations", {"prompt": "x"}),
        "juce": ("/api/juce/process_audio", {**bang}),
    }

    def socket_answer(sio: socketio.Client, params: dict) -> str:
        got: list[tuple[str, dict]] = []
        answered = threading.Event()
        for name in ("error", "process_audio_received"):
            sio.on(name, (lambda n: lambda data=None: (got.append((n, data)), answered.set()))(name))
        sio.emit("process_audio_request", {**bang, **params})
        assert answered.wait(20), "no answer on the socket"
        name, data = got[0]
        return data["code"] if name == "error" else "accepted"

    def http_answer(key: str, path: str, body: dict) -> str:
        resp = requests.post(api.url + path, json=body, headers={"X-API-Key": key}, timeout=20)
        data = resp.json()
        if 200 <= resp.status_code < 300:
            return "accepted"
        assert resp.status_code == 400, resp.text
        return data.get("code") or data["error"]["code"]

    for key, params, expected in ((KEYS["sampling"], {"temperature": 10.5}, "INVALID_REQUEST"),
                                  (KEYS["sampling"], {"cfg_coef": 30.5}, "INVALID_REQUEST"),
                                  (KEYS["sampling-ok"], {"temperature": 10.0, "cfg_coef": 30.0, "top_k": 10_000},
                                   "accepted")):
        answers = {}
        for name, route in routes.items():
            if route is None:
                sio = socketio.Client(reconnection=False)
                sio.connect(api.url, transports=["polling"], auth={"api_key": key}, wait_timeout=10)
                try:
                    answers[name] = socket_answer(sio, params)
                finally:
                    sio.disconnect()
                continue
            path, body = route
            answers[name] = http_answer(key, path, {**body, **params})
        assert set(answers.values()) == {expected}, (params, answers)
    owner = OpenApiClient(api.url, KEYS["sampling-ok"])
    for job in owner.call("listJobs", limit="100").json()["jobs"]:
        owner.call("cancelJob", job_id=job["job_id"])
    for station in owner.call("listStations").json()["stations"]:
        owner.call("stopStation", station_id=station["station_id"])


def test_compat_routes_follow_the_same_keys_and_ownership(api):
    """The JUCE and Swift routes are twins: the same key rule, the same owners."""
    anonymous = requests.post(api.url + "/api/juce/process_audio", json={"audio_data": "x"}, timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["success"] is False
    assert anonymous.json()["code"] == "UNAUTHORIZED" and isinstance(anonymous.json()["error"], str)
    owner = OpenApiClient(api.url, KEYS["sessions"])
    sid = owner.call("createSession", {"audio_data": _b64(make_wav(2.0))}).json()["session_id"]
    for key, expected in ((KEYS["story"], "unknown"), (KEYS["sessions"], "completed")):
        poll = requests.get(f"{api.url}/api/juce/poll_status/{sid}", headers={"X-API-Key": key}, timeout=10)
        assert poll.status_code == 200 and poll.json()["status"] == expected, poll.text
    stranger = requests.get(f"{api.url}/api/latest_generated_audio/{sid}", headers={"X-API-Key": KEYS["story"]},
                            timeout=10)
    assert stranger.status_code == 404 and stranger.json() == {"status": "not_found"}
    retry = requests.post(api.url + "/api/juce/retry_music", json={"session_id": sid},
                          headers={"X-API-Key": KEYS["story"]}, timeout=10)
    assert retry.status_code == 404 and retry.json()["success"] is False


def test_range_headers_with_huge_numbers_are_answered_not_crashed():
    """Numbers past int()'s 4300-digit limit (a 500 once) are past any file."""
    from g4l.errors import RangeNotSatisfiable
    from g4l.web.api.download import parse_range

    huge = "9" * 5000
    assert parse_range(f"bytes=0-{huge}", 1000) == (0, 999)
    assert parse_range(f"bytes=-{huge}", 1000) == (0, 999)
    with pytest.raises(RangeNotSatisfiable):
        parse_range(f"bytes={huge}-", 1000)
    with pytest.raises(RangeNotSatisfiable):
        parse_range(f"bytes={huge}-{huge}", 1000)
    assert parse_range("bytes=10-19", 1000) == (10, 19)


# ---------------------------------------------------------------- fuzzing: refusals change nothing
HTTP_FUZZ_EXAMPLES = 300
#: Routes outside the OpenAPI document (existing clients' shapes, files, health).
UNDOCUMENTED = [("post", "/api/juce/process_audio"), ("post", "/api/juce/continue_music"),
                ("post", "/api/juce/retry_music"), ("post", "/api/juce/update_cropped_audio"),
                ("get", "/api/juce/poll_status/{session_id}"), ("get", "/api/models"),
                ("get", "/api/latest_generated_audio/{session_id}"), ("get", "/health"), ("get", "/health/ready"),
                ("get", "/hls/{token}/index.m3u8"), ("get", "/listen/{token}/status"), ("get", "/metrics")]
BODY_FIELDS = ["audio_data", "model_name", "model", "prompt_duration", "top_k", "top_p", "temperature", "cfg_coef",
               "description", "seed", "duration", "prompt", "session_id", "job_id", "text", "language", "mode",
               "genre", "params", "version", "name", "include_audio", "output_format", "station_id"]
#: Audio that is not a WAV (not "": an empty audio_data means none was sent, and a continue
#: then rightly uses the stored audio).
NOT_WAV = ["@@@", base64.b64encode(b"ID3 not a wav").decode(), "UklGRg==", "=" * 9]


def _fuzz_strategies():
    from hypothesis import strategies as st

    leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
                     st.sampled_from(["", "debug", "-1", "../../etc/passwd", "\u0000", "9" * 400, "NaN"]))
    value = st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                         max_leaves=8)
    junk_id = st.one_of(st.text(min_size=1, max_size=20).filter(lambda t: "/" not in t and t not in (".", "..")),
                        st.sampled_from(["0" * 36, "x" * 300, "%00", "null", "-1"]))
    raw_body = st.sampled_from([b"", b"\xff\xfe\x00", b"[" * 3000, b'{"a":' + b"9" * 5000 + b"}", b"not json",
                                b'"just a string"', b"[1,2,3]", b'{"audio_data": 5}'])
    return st, value, junk_id, raw_body


def test_fuzzed_http_requests_never_crash_and_refusals_change_nothing(api, files_db, redis_server):
    """hypothesis over every route (the document's and the undocumented ones), with the
    owner's key, another key, a wrong key and none: no 500 or INTERNAL ever; another key
    never gets a 2xx on the owner's session or job; and the owner's reference session and
    job, named in half the requests (always with audio that is not a WAV, never a delete),
    are byte for byte what they were, in Redis and in GridFS."""
    import redis as redis_lib
    from hypothesis import HealthCheck, given, settings

    st, value, junk_id, raw_body = _fuzz_strategies()
    owner = OpenApiClient(api.url, KEYS["fuzz"])
    made = owner.call("bangSession", {"audio_data": _b64(make_wav(4.0)), "prompt_duration": 2})
    assert made.status_code == 202, made.text
    ref_session = made.json()["session_id"]
    assert _poll_session(owner, ref_session)["status"] == "idle"
    ref_job = owner.call("createGenerateJob", {"prompt": "fuzz reference", "duration": 2.0}).json()["job_id"]
    assert owner.wait(ref_job, ("completed",))["status"] == "completed"
    r = redis_lib.Redis.from_url(re.sub(r"/\d+$", "", redis_server.url) + "/3", decode_responses=True)
    volatile = {"updated", "last_access"}

    def snapshot() -> dict:
        files = sorted(str(f["_id"]) for f in files_db.find(
            {"$or": [{"metadata.session_id": ref_session}, {"metadata.job_id": ref_job}]}, {"_id": 1}))
        return {"session": {k: v for k, v in r.hgetall(f"g4l:session:{ref_session}").items() if k not in volatile},
                "job": {k: v for k, v in r.hgetall(f"g4l:job:{ref_job}").items() if k not in volatile},
                "files": files}

    # A result reaches its client before (or while) the worker stores it: wait for both
    # reference files, or one appearing mid-run reads as a change.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kinds = {(f["metadata"].get("session_id"), f["metadata"].get("kind")) for f in files_db.find(
            {"$or": [{"metadata.session_id": ref_session}, {"metadata.job_id": ref_job}]}, {"metadata": 1})}
        if (ref_session, "output") in kinds and any(k == "output" and s != ref_session for s, k in kinds):
            break
        time.sleep(0.2)
    before = snapshot()
    assert before["session"] and before["job"] and before["files"]
    routes = [(m, p) for p, item in owner.doc["paths"].items() for m in item if m in ("get", "post", "delete")
              and p != "/ws"] + UNDOCUMENTED
    keys = {"owner": KEYS["fuzz"], "other": KEYS["fuzz-other"], "wrong": "key-nobody", "none": None}
    seen: list[tuple[str, str, str, int]] = []
    bad: list[str] = []

    @given(data=st.data())
    @settings(max_examples=HTTP_FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def fuzz(data) -> None:
        method, path = data.draw(st.sampled_from(routes))
        who = data.draw(st.sampled_from(sorted(keys)))
        on_ref = data.draw(st.booleans())
        if who == "owner" and on_ref and method != "get":
            # The owner may rightly change its own session and job (delete, listen, cleanup,
            # and since history and terry an undo, a redo, an import of the reference job, a
            # transform...: whether one is accepted depends on what ran before it and on the
            # rate limits, so on the machine's speed): its writes only ever go to other ids.
            # Refusals of the owner's bad requests on its real session, session and history compared
            # before and after: tests/test_bad_input.py (socket), tests/test_transform*.py (HTTP).
            on_ref = False
        ids = {"session_id": ref_session, "job_id": ref_job} if on_ref else {}
        url = api.url + re.sub(r"{(\w+)}", lambda m: ids.get(m.group(1)) or data.draw(junk_id).replace("/", "_"),
                               path)
        headers = {"X-API-Key": keys[who]} if keys[who] else {}
        body: bytes | None = None
        if method == "post":
            if data.draw(st.booleans()):
                fields = data.draw(st.dictionaries(st.sampled_from(BODY_FIELDS), value, max_size=6))
                if on_ref:
                    fields.update(session_id=ref_session, job_id=ref_job,
                                  audio_data=data.draw(st.sampled_from(NOT_WAV)))
                body = json.dumps(fields).encode()
            else:
                body = data.draw(raw_body)
            headers["Content-Type"] = "application/json"
        resp = requests.request(method.upper(), url, data=body, headers=headers, timeout=30)
        seen.append((who, method, path, resp.status_code))
        text = resp.text[:300]
        if resp.status_code == 500 or "INTERNAL" in text:
            bad.append(f"{who} {method.upper()} {url[:120]} -> {resp.status_code} {text}")
        if who != "owner" and on_ref and "{" in path and 200 <= resp.status_code < 300 \
                and '"status":"unknown"' not in text.replace(" ", ""):  # the JUCE poll's "no such session"
            bad.append(f"{who} reached the owner's {path}: {resp.status_code} {text}")

    try:
        fuzz()
    finally:  # leave no job or station of this run behind
        for job in owner.call("listJobs", limit="100").json()["jobs"]:
            if job["job_id"] != ref_job:
                owner.call("cancelJob", job_id=job["job_id"])
        for station in owner.call("listStations").json()["stations"]:
            owner.call("stopStation", station_id=station["station_id"])
    assert not bad, "\n".join(bad[:10])
    assert snapshot() == before  # nothing the fuzzer sent changed the reference session or job
    assert requests.get(api.url + "/health/live", timeout=10).status_code == 200
    refused = sum(1 for *_rest, code in seen if code >= 400)
    print(f"http fuzz: {len(seen)} requests over {len(routes)} routes, {refused} refused, 0 server errors")
    assert len({(m, p) for _w, m, p, _c in seen}) >= len(routes) * 3 // 4  # most routes were reached


def test_terry_transforms_only_the_keys_own_sessions(api) -> None:
    """terry with API keys: another key's session does not exist for it, on /api/v1, the
    JUCE route and the socket's service alike; the owner's transform is a job of its session."""
    mine, other = {"X-API-Key": KEYS["terry"]}, {"X-API-Key": KEYS["other"]}
    wav = make_wav(2)
    sid = requests.post(f"{api.url}/api/v1/sessions", json={"audio_data": _b64(wav)}, headers=mine,
                        timeout=30).json()["session_id"]
    history = requests.get(f"{api.url}/api/v1/sessions/{sid}/history", headers=mine, timeout=10).json()
    for path, body in ((f"/api/v1/sessions/{sid}/transform", {"variation": "celtic"}),
                       ("/api/juce/transform_audio", {"variation": "celtic", "session_id": sid})):
        resp = requests.post(api.url + path, json=body, headers=other, timeout=30)
        assert resp.status_code == 404, (path, resp.text)
        error = resp.json()["error"]
        assert (error["code"] if isinstance(error, dict) else resp.json()["code"]) == "SESSION_NOT_FOUND"
    undo = requests.post(f"{api.url}/api/juce/undo_transform", json={"session_id": sid}, headers=other, timeout=10)
    assert undo.status_code == 404 and undo.json()["success"] is False
    anonymous = requests.post(f"{api.url}/api/juce/transform_audio", json={"variation": "celtic",
                                                                          "audio_data": _b64(wav)}, timeout=30)
    assert anonymous.status_code == 401
    assert requests.get(f"{api.url}/api/v1/sessions/{sid}/history", headers=mine, timeout=10).json() == history
    accepted = requests.post(f"{api.url}/api/v1/sessions/{sid}/transform", json={"variation": "celtic"},
                             headers=mine, timeout=30)
    assert accepted.status_code == 202 and accepted.json()["kind"] == "transform", accepted.text
