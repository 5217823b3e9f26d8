"""A new station's first stretch is heard while it is generated, end to end on a real
server batching jobs (``G4L_MAX_BATCH`` 8, tiny model), read as a listener does (playlist
polling, ffmpeg decoding).

- its first audible segment is listed before its first job's ``completed`` notice (the
  order of the two, both seen by this test: without streaming the first audio can only
  come from the stored chunk, after the completion);
- the next, stored, chunk starts where the streamed stretch's audio ends (the station's
  ``chunk_starts``, in stream seconds) and the decoded program is music from the first
  stretch's start through the join: no gap, no repeat (the stored first chunk is not
  played again);
- its later jobs, generated with a buffer ahead, publish no pieces.

``G4L_DEBUG_MODEL_RTF`` 2.5 holds each finished job to 1/2.5 of its audio's length (the
tiny model is far faster than real time; a real one on a GPU is a few times real time):
the first stretch (8 s) completes at 3.2 s, after its first audible segment, and the
second (7 s) is stored about 2.5 s before the first has played out (at 2, just under what
these lengths need, it can run dry: docs/hls.md, "Streamed first stretch").
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import soundfile as sf
from conftest import ServerStack, server_stack, wait_until
from test_streamed_hls import Notices, _audible

from g4l import audio, keys
from g4l.hls.watch import PlaylistWatcher, decode_ts

RATE = 48_000
ENV = {"G4L_MAX_BATCH": "8", "G4L_OUTPUT_SECONDS": "10", "G4L_STATION_PROMPT_SECONDS": "3",
       "G4L_DEBUG_MODEL_RTF": "2.5", "G4L_HLS_IDLE_TIMEOUT_S": "3600"}
#: Seconds: the first stretch (8 s) is on the air at once; later ones keep it above 1 s.
THRESHOLDS = {"healthy": 24, "warning": 16, "critical": 8, "emergency": 1}
SILENT_RMS = 0.003  # the tiny model's music is ~0.044 RMS


Stack = ServerStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    with server_stack(tmp_path_factory.mktemp("station-stream"), **ENV) as stack:
        yield stack


def stored(stack: Stack, blob_id: str) -> np.ndarray:
    """A stored chunk as 48 kHz mono, straight from GridFS."""
    import gridfs
    import pymongo
    from bson import ObjectId

    db = pymongo.MongoClient(stack.mongo.url)[stack.server.env.get("G4L_MONGO_DB", "g4l")]
    data = gridfs.GridFSBucket(db, bucket_name="audio").open_download_stream(ObjectId(blob_id)).read()
    x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.resample(x.T, rate, RATE).mean(axis=0)


def silent_windows(x: np.ndarray, window: int = 480) -> int:
    """How many 10 ms windows of ``x`` are silent."""
    n = x.shape[0] // window
    rms = np.sqrt((x[: n * window].reshape(n, window) ** 2).mean(axis=1))
    return int(np.sum(rms < SILENT_RMS))


def started_jobs(notices: Notices, station_id: str) -> list[str]:
    return [n["job_id"] for _, n in list(notices.seen) if n.get("type") == "started"
            and n.get("session_id") == station_id]


# The second stretch must be stored before the first has played out (2.5 s ahead at RTF 2.5):
# with every xdist worker busy the tiny model slows to about real time and the stream runs dry.
@pytest.mark.alone
def test_a_new_station_is_heard_while_its_first_stretch_is_generated_and_plays_on_seamlessly(stack: Stack) -> None:
    r = stack.redis_client()
    notices = Notices(r).start()
    resp = requests.post(f"{stack.url}/api/v1/stations", json={
        "model": "debug", "prompt": "warm synth pads", "buffer_thresholds_s": THRESHOLDS}, timeout=10)
    assert resp.status_code == 201, resp.text
    st = resp.json()
    sid, key = st["station_id"], f"g4l:station:{st['station_id']}"
    watcher = PlaylistWatcher(stack.url + st["playlist_url"], interval=0.1).start()
    chunks: dict[int, tuple[dict, np.ndarray]] = {}

    def keep_chunks() -> bool:
        """Read each stored chunk as soon as it is queued (a heard chunk is deleted)."""
        for raw in r.lrange(f"{key}:chunks", 0, -1):
            entry = json.loads(raw)
            if entry["seq"] not in chunks:
                chunks[entry["seq"]] = (entry, stored(stack, entry["blob"]))
        return {1, 2} <= set(chunks)

    try:
        first = wait_until(lambda: notices.job_of(sid, 0.0), 60, "the station's first job to start")
        wait_until(lambda: notices.of(first, "completed"), 60, "its completion")
        started_at = notices.of(first, "started")[0][0]
        completed_at = notices.of(first, "completed")[0][0]

        def first_audible() -> float | None:
            for seg in watcher.ordered():
                if _audible(watcher.base + seg.uri, seg.data):
                    return seg.seen_at
            return None

        heard_at = wait_until(first_audible, 30, "an audible segment")
        print(f"\nstation: first job started -> first audible HLS segment {heard_at - started_at:.2f} s; "
              f"the job completed after {completed_at - started_at:.2f} s")
        # Heard before the job completed: its audio went out while it was generated.
        assert heard_at < completed_at, (heard_at - started_at, completed_at - started_at)
        pieces = [n for _, n in notices.of(first, "partial")]
        assert len(pieces) >= 2 and pieces[-1]["final"] and not any(p["final"] for p in pieces[:-1])
        wait_until(keep_chunks, 60, "chunks 1 and 2 stored")
        feed = json.loads(r.hget(key, "feed_started") or "null")
        assert feed and feed["seq"] == 1 and feed.get("streamed"), feed
        # Chunk 1 wholly heard, then 3 s of chunk 2.
        wait_until(lambda: 1 in json.loads(r.hget(key, "played") or "[]"), 60, "chunk 1 heard")
        wait_until(lambda: keep_chunks() and len(started_jobs(notices, sid)) >= 3, 60, "a third job to start")
        time.sleep(4.0)
    finally:
        watcher.stop()
        notices.stop()
    assert watcher.problems == [] and watcher.gaps() == []
    segments = watcher.ordered()
    assert segments[0].sequence == 0  # the program is decoded from the stream's start
    program = decode_ts(b"".join(s.data for s in segments)).mean(axis=0)
    (e1, c1), (e2, _) = chunks[1], chunks[2]
    assert e1["lead_in_s"] == 0 and e2["join"] == "continue"
    starts = {s["seq"]: s for s in json.loads(r.hget(key, "chunk_starts") or "[]")}
    s1, s2 = starts[1]["stream_s"], starts[2]["stream_s"]
    assert starts[1]["streamed"] and not starts[2]["streamed"]
    # Where the music begins in the decoded program (the first 10 ms window with sound).
    rms = np.sqrt((program[: program.shape[0] // 480 * 480].reshape(-1, 480) ** 2).mean(axis=1))
    onset = float(np.argmax(rms > SILENT_RMS)) / 100
    print(f"program: music from {onset:.3f} s; chunk 1 (streamed, {c1.shape[0] / RATE:.3f} s stored) queued at "
          f"{s1:.3f} s, chunk 2 (stored) at {s2:.3f} s: {(s2 - s1 - c1.shape[0] / RATE) * 1000:+.1f} ms against "
          f"chunk 1's length")
    assert abs(onset - s1) < 0.06, (onset, s1)  # within its fade-in (one crossfade)
    # Chunk 2 starts where chunk 1's streamed audio ends: nothing missing, nothing twice
    # (chunk 1 played again from storage would put it 8 s later) ...
    assert abs(s2 - s1 - c1.shape[0] / RATE) < 0.005, (s1, s2, c1.shape[0] / RATE)
    # ... and the music runs on through the join, never silent.
    assert program.shape[0] > (s2 + 3) * RATE
    assert silent_windows(program[int((s1 + 0.05) * RATE): int((s2 + 3) * RATE)]) == 0
    # The streamed music is the stored chunk's sound (the tiny model's is a steady tone).
    heard = program[int((s1 + 0.5) * RATE): int((s1 + 7.5) * RATE)]
    assert abs(float(np.sqrt(np.mean(heard ** 2))) / float(np.sqrt(np.mean(c1 ** 2))) - 1) < 0.2
    played = json.loads(r.hget(key, "played") or "[]")
    assert played[:2] == [1, 2] or played == [1], played
    # Only the first job was streamed: the later ones had a buffer ahead.
    jobs = started_jobs(notices, sid)
    assert len(jobs) >= 3 and jobs[0] == first
    streamed = {n["job_id"] for _, n in notices.seen if n.get("type") == "partial"}
    assert streamed == {first}, streamed
    assert r.exists(keys.partial_wanted(first)) and not any(r.exists(keys.partial_wanted(j)) for j in jobs[1:])
    requests.delete(f"{stack.url}/api/v1/stations/{sid}", timeout=10)


def test_a_station_that_would_stay_off_the_air_after_its_first_stretch_streams_nothing(stack: Stack) -> None:
    """``buffer_resume_s`` above the first stretch (8 s): the station was going to wait
    for more than that job anyway (pre-generation), so nothing is streamed."""
    r = stack.redis_client()
    notices = Notices(r).start()
    resp = requests.post(f"{stack.url}/api/v1/stations", json={
        "model": "debug", "prompt": "slow strings", "buffer_thresholds_s": THRESHOLDS, "buffer_resume_s": 12},
        timeout=10)
    assert resp.status_code == 201, resp.text
    sid = resp.json()["station_id"]
    try:
        first = wait_until(lambda: notices.job_of(sid, 0.0), 60, "the station's first job to start")
        wait_until(lambda: notices.of(first, "completed"), 60, "its completion")
        wait_until(lambda: r.llen(f"g4l:station:{sid}:chunks") >= 1, 30, "its chunk stored")
        assert notices.of(first, "partial") == [] and not r.exists(keys.partial_wanted(first))
        assert r.hget(f"g4l:station:{sid}", "on_air") != "1"  # 8 s stored, 12 s needed
    finally:
        notices.stop()
        requests.delete(f"{stack.url}/api/v1/stations/{sid}", timeout=10)
