"""The device's story over a real websocket: bang, continue, retry, crop, cleanup."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import gridfs
import numpy as np
import pytest
import redis as redis_lib
from bson import ObjectId

from conftest import make_wav, read_wav, wav_info
from g4l.jobs import handoff
from plugin_protocol import events
from plugin_protocol.client import DeviceClient, ProtocolError


def test_bang_continue_twice_retry_crop_continue_cleanup(client: DeviceClient, mongo_db, redis_server,
                                                        server) -> None:
    bang = client.bang(make_wav(30), model_name="debug", prompt_duration=6)
    info = wav_info(bang.audio)
    assert (info.samplerate, info.channels, info.subtype) == (48000, 2, "PCM_16")
    assert info.duration == pytest.approx(30.0, abs=0.05)
    # Progress arrived before the result and ended at 100.
    assert bang.progress and bang.progress[-1] == 100
    assert bang.progress == sorted(bang.progress)
    assert bang.queue and bang.queue[0]["status"] in ("queued", "processing")

    raw = redis_lib.Redis.from_url(redis_server.url)
    spliced: list[bool] = []

    def handed_off_spliced(result) -> None:
        """Whether the worker handed back only the new audio (read before the key expires)."""
        spliced.append(raw.get(f"g4l:result:{result.job_id}")[:len(handoff.MAGIC)] == handoff.MAGIC)

    sid = bang.session_id
    first = client.continue_(sid, bang.audio)
    handed_off_spliced(first)
    assert first.session_id == sid
    assert wav_info(first.audio).duration == pytest.approx(54.0, abs=0.05)  # grows by 30 - 6
    second = client.continue_(sid, first.audio)
    handed_off_spliced(second)
    assert wav_info(second.audio).duration == pytest.approx(78.0, abs=0.05)
    assert len(second.progress) >= 2 and second.progress[-1] == 100

    # The continue kept the input's head untouched: input minus its last 6 s comes first.
    head, _ = read_wav(first.audio)
    out, _ = read_wav(second.audio)
    keep = head.shape[0] - 6 * 48000
    np.testing.assert_allclose(out[:keep], head[:keep], atol=1e-4)

    retry = client.retry(sid)
    handed_off_spliced(retry)
    # The retry used the second continue's INPUT (first.audio), not its output.
    assert wav_info(retry.audio).duration == pytest.approx(78.0, abs=0.05)
    redo, _ = read_wav(retry.audio)
    np.testing.assert_allclose(redo[:keep], head[:keep], atol=1e-4)

    crop = client.crop(sid, make_wav(40))
    assert crop["session_id"] == sid
    after_crop = client.continue_(sid)  # no audio_data: continue from the stored (cropped) audio
    handed_off_spliced(after_crop)
    assert wav_info(after_crop.audio).duration == pytest.approx(64.0, abs=0.05)

    # Every version is a GridFS file with metadata. A result reaches the client before
    # (or while) the worker writes it to GridFS, so the last one may take a moment.
    deadline = time.monotonic() + 15
    while True:
        files = list(mongo_db["audio.files"].find({"metadata.session_id": sid}))
        kinds = [f["metadata"]["kind"] for f in files]
        if kinds.count("output") >= 5 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert kinds.count("output") == 5 and kinds.count("crop") == 1 and kinds.count("input") == 3
    for f in files:
        if f["metadata"]["kind"] in ("output", "crop"):
            assert f["metadata"]["sample_rate"] == 48000 and f["metadata"]["channels"] == 2
    bucket = gridfs.GridFSBucket(mongo_db, bucket_name="audio")
    # What each client received is, byte for byte, what GridFS keeps: also for the
    # continues with an upload, whose new audio alone went through Redis and was joined
    # to the upload by the web node (g4l.jobs.handoff).
    by_version = {f["metadata"]["version"]: f for f in files if f["metadata"]["kind"] == "output"}
    for version, sent in ((1, bang), (2, first), (3, second), (4, retry), (6, after_crop)):
        assert bucket.open_download_stream(by_version[version]["_id"]).read() == sent.audio, version
    assert spliced == [True, True, False, False]
    # The spliced ones were joined to the upload the web node held, not read back from GridFS.
    joined = {}
    for line in (Path(server.env["G4L_DATA_DIR"]) / "server.log").read_text(errors="replace").splitlines():
        if '"result delivered"' in line:
            rec = json.loads(line)
            joined[rec.get("job_id")] = rec.get("input")
    assert [joined.get(r.job_id) for r in (first, second, retry)] == ["held", "held", None]
    latest = max((f for f in files if f["metadata"]["kind"] == "output"), key=lambda f: f["metadata"]["version"])
    assert bucket.open_download_stream(latest["_id"]).read() == after_crop.audio

    status = client.verify(sid)
    assert status["exists"] and status["status"] == "idle" and status["version"] == 6
    done = client.cleanup(sid)
    assert done["session_id"] == sid
    assert client.verify(sid)["exists"] is False
    # Cleanup forgets the session, but its audio stays until the retention sweep.
    assert bucket.open_download_stream(ObjectId(latest["_id"])).read()


def test_swift_client_sends_json_strings_with_escaped_slashes(client: DeviceClient) -> None:
    bang = client.bang(make_wav(8, rate=44100, channels=1, subtype="PCM_24"), model_name="debug",
                       prompt_duration=4)
    info = wav_info(bang.audio)
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_24")
    # The Swift client sends the payload as a JSON string, escapes "/" and pads ids.
    payload = json.dumps({"session_id": f"  {bang.session_id} ", "model_name": "debug",
                          "audio_data": base64.b64encode(bang.audio).decode(), "prompt_duration": "4",
                          "description": "dark \\/ moody"}).replace("/", "\\/")
    since = client.mark()
    client.emit(events.CONTINUE_MUSIC, payload)
    _, ack = client.wait_for(events.CONTINUE_MUSIC_RECEIVED, since)
    assert ack["session_id"] == bang.session_id
    _, result = client.wait_for(events.MUSIC_CONTINUED, since)
    assert wav_info(base64.b64decode(result["audio_data"])).duration == pytest.approx(30 + 26, abs=0.05)


def test_second_request_on_busy_session_is_refused_and_first_completes(client: DeviceClient) -> None:
    bang = client.bang(make_wav(10), model_name="debug", prompt_duration=6)
    since = client.mark()
    client.emit(events.CONTINUE_MUSIC, {"session_id": bang.session_id})
    client.wait_for(events.CONTINUE_MUSIC_RECEIVED, since)
    with pytest.raises(ProtocolError) as err:
        client.retry(bang.session_id)  # a continue runs: busy, even though retry would be valid later
    assert err.value.code == "BUSY"
    assert err.value.payload["message"] == "Generation already in progress"
    with pytest.raises(ProtocolError) as err:
        client.continue_(bang.session_id)
    assert err.value.code == "BUSY"
    _, result = client.wait_for(events.MUSIC_CONTINUED, since, errors=False)
    assert wav_info(base64.b64decode(result["audio_data"])).duration == pytest.approx(54.0, abs=0.05)


def test_retry_before_any_continue_is_a_clear_error(client: DeviceClient) -> None:
    bang = client.bang(make_wav(6), model_name="debug", prompt_duration=6)
    with pytest.raises(ProtocolError) as err:
        client.retry(bang.session_id)
    assert err.value.code == "NOTHING_TO_RETRY"
    assert client.verify(bang.session_id)["version"] == 1


def test_continue_of_a_120s_float_wav(client: DeviceClient) -> None:
    source = make_wav(120, subtype="FLOAT")
    assert len(base64.b64encode(source)) > 60_000_000
    result = client.continue_(None, source, model_name="debug", prompt_duration=6)
    info = wav_info(result.audio)
    assert (info.samplerate, info.channels, info.subtype) == (48000, 2, "FLOAT")
    assert info.duration == pytest.approx(144.0, abs=0.05)


def test_chunked_restore_then_continue_from_it(client: DeviceClient) -> None:
    wav = make_wav(20, rate=32000, channels=1)
    sid = client.restore_chunked(wav, chunk_size=100_000, model_name="debug", prompt_duration=5)
    chunk_acks = [e for e in client.events_since(0, events.CHUNK_RECEIVED) if e["session_id"] == sid]
    assert len(chunk_acks) == -(-len(base64.b64encode(wav)) // 100_000)
    result = client.continue_(sid)
    assert wav_info(result.audio).duration == pytest.approx(20 - 5 + 30, abs=0.05)


def test_chunk_gap_is_reported_missing(client: DeviceClient) -> None:
    since = client.mark()
    client.emit(events.BEGIN_RESTORE_AUDIO, {})
    _, ready = client.wait_for(events.READY_FOR_CHUNKS, since)
    sid = ready["session_id"]
    text = base64.b64encode(make_wav(2)).decode()
    parts = [text[:1000], text[1000:2000], text[2000:]]
    since = client.mark()
    client.emit(events.AUDIO_CHUNK, {"session_id": sid, "chunk": parts[0], "chunk_index": 0, "total_chunks": 3})
    # The server handles each event in its own greenlet: chunk 0 is acknowledged before the
    # last one is sent, so the gap is chunk 1 alone (not 0 still being stored).
    client.wait_for(events.CHUNK_RECEIVED, since)
    since = client.mark()
    client.emit(events.AUDIO_CHUNK, {"session_id": sid, "chunk": parts[2], "chunk_index": 2, "total_chunks": 3,
                                     "is_last": True})
    _, missing = client.wait_for(events.CHUNKS_MISSING, since)
    assert missing["missing_chunks"] == [1]
    since = client.mark()
    client.emit(events.AUDIO_CHUNK, {"session_id": sid, "chunk": parts[1], "chunk_index": 1, "total_chunks": 3})
    client.wait_for(events.RESTORE_COMPLETE, since)


def test_progress_status_and_verify_answer(client: DeviceClient) -> None:
    missing = client.verify("00000000-0000-4000-8000-000000000000")
    assert missing["exists"] is False
    bang = client.bang(make_wav(5), model_name="debug", prompt_duration=3)
    status = client.progress_status(bang.session_id, 50)
    assert status["exists"] and status["progress"] == 100 and not status["generation_in_progress"]


def test_reconnecting_client_gets_a_result_it_missed(server) -> None:
    with DeviceClient(server.url) as first:
        bang = first.bang(make_wav(5), model_name="debug", prompt_duration=3)
        since = first.mark()
        first.emit(events.CONTINUE_MUSIC, {"session_id": bang.session_id})
        first.wait_for(events.CONTINUE_MUSIC_RECEIVED, since)
    # The device dropped off mid-generation; it comes back and sends verify_session.
    with DeviceClient(server.url) as again:
        since = again.mark()
        import time

        deadline = time.monotonic() + 60
        while again.verify(bang.session_id)["generation_in_progress"] and time.monotonic() < deadline:
            time.sleep(0.5)
        _, result = again.wait_for(events.MUSIC_CONTINUED, since, session_id=bang.session_id)
        assert wav_info(base64.b64decode(result["audio_data"])).duration == pytest.approx(57.0, abs=0.05)


def test_server_dictates_ping_settings(client: DeviceClient, server) -> None:
    # python-engineio ignores unknown keyword arguments: check the handshake carries ours.
    assert client.sio.eio.ping_interval == 25
    assert client.sio.eio.ping_timeout == 60
