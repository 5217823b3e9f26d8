"""A station's long buffer and prompt schedule, end to end on real servers (tiny model).

The thresholds are scaled down from hours to seconds; ``G4L_DEBUG_MODEL_RTF`` makes the
tiny model slower than real time, as a CPU box is with a real one. What the listeners
get is read from the HLS segments (decoded by ffmpeg) and lined up with the status by the
segments' program date-times; what is stored is read from Redis and GridFS.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import soundfile as sf
from conftest import ServerStack, server_stack, wait_until
from test_station_outputs import child_pid

from g4l import audio, keys
from g4l.hls.watch import PlaylistWatcher, decode_ts

RATE = 48_000
ENV = {"G4L_OUTPUT_SECONDS": "10", "G4L_STATION_PROMPT_SECONDS": "3", "G4L_STATION_BUFFER_S": "20",
       "G4L_STATION_MEMORY_S": "6", "G4L_HLS_IDLE_TIMEOUT_S": "3600"}
#: Seconds, not hours: HEALTHY >= 30 > WARNING >= 22 > CRITICAL >= 15 > EMERGENCY >= 8 > DEPLETED.
THRESHOLDS = {"healthy": 30, "warning": 22, "critical": 15, "emergency": 8}
SILENT_RMS = 0.003  # the tiny model's music is ~0.044 RMS, steady; the slate ~0.05


Stack = ServerStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with server_stack(tmp_path_factory.mktemp("station-buffer"), **ENV) as s:
        yield s


def create(stack: Stack, **body) -> tuple[dict, str]:
    resp = requests.post(f"{stack.url}/api/v1/stations", json={"model": "debug", **body}, timeout=10)
    assert resp.status_code == 201, resp.text
    st = resp.json()
    return st, st["station_id"]


def status(stack: Stack, station_id: str) -> dict:
    resp = requests.get(f"{stack.url}/api/v1/stations/{station_id}", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def program(watcher: PlaylistWatcher) -> list[tuple[float, np.ndarray]]:
    """The audio heard, per run of segments without a discontinuity: (wall time of its
    first frame, mono samples). Each run is decoded in one piece (no priming at joins)."""
    runs: list[list] = []
    for seg in watcher.ordered():
        if not runs or seg.discontinuity or seg.sequence != runs[-1][-1].sequence + 1:
            runs.append([])
        runs[-1].append(seg)
    out = []
    for run in runs:
        pcm = decode_ts(b"".join(s.data for s in run))
        out.append((run[0].program_date_time.timestamp(), pcm.mean(axis=0)))
    return out


def silent_runs(x: np.ndarray, window: int = 480) -> list[tuple[float, float]]:
    """(start s, length s) of each stretch whose 10 ms windows are all under SILENT_RMS."""
    w = x[: len(x) // window * window].reshape(-1, window)
    quiet = np.sqrt((w ** 2).mean(axis=1)) < SILENT_RMS
    runs, start = [], None
    for i, q in enumerate([*quiet, False]):
        if q and start is None:
            start = i
        elif not q and start is not None:
            runs.append((start * window / RATE, (i - start) * window / RATE))
            start = None
    return runs


def tones_of_the_slate(x: np.ndarray) -> float:
    """How far the slate's three tones stand above the spectrum's median (smallest of them)."""
    spectrum = np.abs(np.fft.rfft(x))
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    median = float(np.median(spectrum))
    return min(float(spectrum[np.argmin(np.abs(freqs - hz))]) / median for hz in (220.0, 440.0, 660.0))


# ---------------------------------------------------------------------- (d) checks
def test_bad_buffer_and_schedule_parameters_get_a_clear_400_and_change_nothing(stack: Stack) -> None:
    before = requests.get(f"{stack.url}/api/v1/stations", timeout=10).json()["stations"]
    keys_before = set(stack.redis_client().keys("g4l:station:*"))
    two = {"prompts": ["a", "b"], "rotate_every_s": 20}
    cases = [
        ({"prompt": "x", "buffer_thresholds_s": {"healthy": 10, "warning": 20, "critical": 5, "emergency": 1}},
         "decrease strictly"),
        ({"prompt": "x", "buffer_thresholds_s": {"healthy": 10, "warning": 5}}, "missing: critical, emergency"),
        ({"prompt": "x", "buffer_thresholds_s": {"healthy": 10, "warning": 5, "critical": 2, "emergency": -1}},
         "emergency > 0"),
        ({"prompt": "x", "buffer_thresholds_s": "short"}, "buffer_thresholds_s"),
        ({"prompt": "x", "buffer_thresholds_s": THRESHOLDS, "buffer_resume_s": 5}, "buffer_resume_s"),
        ({"prompt": "x", "chunk_seconds": 3600}, "chunk_seconds must be 10-600"),
        ({**two, "transition": {"kind": "fade", "seconds": 2}}, "transition.kind"),
        ({**two, "transition": {"kind": "break", "seconds": 0}}, "a break lasts"),
        ({**two, "rotate_every_s": 10, "transition": {"kind": "crossfade", "seconds": 6}}, "half of rotate_every_s"),
        ({**two, "transition": {"kind": "crossfade", "seconds": 9}}, "a crossfade lasts"),
        ({"prompt": "x", "transition": {"kind": "break", "seconds": 2}}, "needs a rotation"),
    ]
    for body, words in cases:
        resp = requests.post(f"{stack.url}/api/v1/stations", json={"model": "debug", **body}, timeout=10)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["code"] == "INVALID_REQUEST", resp.text
        assert words in resp.json()["error"]["message"], (words, resp.text)
    assert requests.get(f"{stack.url}/api/v1/stations", timeout=10).json()["stations"] == before
    assert set(stack.redis_client().keys("g4l:station:*")) == keys_before


# ---------------------------------------------------------------------- (c) schedule
@pytest.mark.parametrize("kind", ["break", "crossfade"])
def test_a_rotation_comes_on_schedule_with_its_break_or_crossfade(stack: Stack, kind: str) -> None:
    seconds = 3.0
    # Chunks of 10 s: [0, 10), [10, 16) (cut at the boundary; + 3 s under a crossfade), [16, 26)...
    st, sid = create(stack, prompts=["slow ambient pads", "fast drum and bass"], rotate_every_s=16,
                     chunk_seconds=10, transition={"kind": kind, "seconds": seconds})
    watcher = PlaylistWatcher(stack.url + st["playlist_url"]).start()
    try:
        info = wait_until(lambda: (lambda s: s if s["next_prompt"] else None)(status(stack, sid)), 30, "status")
        assert info["next_prompt"] == "fast drum and bass" and info["transition"] == {"kind": kind,
                                                                                      "seconds": seconds}
        assert 0 <= info["next_prompt_in_s"] <= 16 + (seconds if kind == "break" else 0)
        rotation = wait_until(lambda: (status(stack, sid)["rotations"] or [None])[0], 60, "the rotation")
        assert rotation["index"] == 1 and rotation["scheduled_audio_s"] == 16.0 and rotation["audio_s"] == 16.0
        assert rotation["transition"] == kind
        wait_until(lambda: time.time() > rotation["plays_at"] + 5, 30, "the new prompt to be heard a while")
        after = status(stack, sid)
        assert after["current_prompt"] == "fast drum and bass" and after["next_prompt"] == "slow ambient pads"
    finally:
        watcher.stop()
        requests.delete(f"{stack.url}/api/v1/stations/{sid}", timeout=10)
    assert watcher.problems == [] and watcher.gaps() == []
    [(t0, heard)] = program(watcher)
    first = int(np.argmax(np.abs(heard) > 0.01))  # the music begins (before it: the stream's lead-in)
    at = rotation["plays_at"] - t0  # where the new prompt's first frame is heard
    quiet = [(s, n) for s, n in silent_runs(heard) if s * RATE > first + RATE // 10]
    # A box too busy to generate in real time runs the stream dry now and then: each such
    # silence is an underrun the status reports; any other silence is a fault.
    underruns = after["underruns"]
    print(f"\n{kind}: new prompt at {at:.2f} s of the program; silent runs after the music began: "
          f"{[(round(s, 2), round(n, 2)) for s, n in quiet]}; underruns reported: {underruns}")
    assert at * RATE < len(heard) - 4 * RATE
    if kind == "break":
        # One silence, of the break's length, just before the new prompt.
        [(start, length)] = [(s, n) for s, n in quiet if abs(s + n - at) <= 0.6]
        assert abs(length - seconds) <= 0.15, quiet
        assert len(quiet) - 1 <= underruns, (quiet, underruns)
    else:
        assert len(quiet) <= underruns, (quiet, underruns)  # a crossfade: never a silence of its own
        # Both prompts' music overlap: the level through the fade stays that of the music.
        w = heard[int((at - 0.5) * RATE): int((at + seconds + 0.5) * RATE)]
        rms = np.sqrt((w[: len(w) // 4800 * 4800].reshape(-1, 4800) ** 2).mean(axis=1))
        assert rms.min() > 0.5 * np.median(rms), rms


# ---------------------------------------------------------------------- chunk length
@pytest.mark.alone  # the unpaced tiny model must outrun playback (tests/conftest.py)
def test_minute_long_chunks_are_generated_past_the_model_window_and_stored_whole(stack: Stack) -> None:
    """chunk_seconds 60: each generation (a continuation of 3 + 60 s) runs AudioCraft's
    extension past the tiny model's 30 s window; the stored chunks are 60 s of FLAC."""
    st, sid = create(stack, prompt="long form ambient", chunk_seconds=60, buffer_thresholds_s=THRESHOLDS)
    r = stack.redis_client()
    entries = wait_until(lambda: (lambda e: e if len(e) >= 2 else None)(
        [json.loads(x) for x in r.lrange(f"g4l:station:{sid}:chunks", 0, -1)]), 80, "two 60 s chunks")
    info = status(stack, sid)
    requests.delete(f"{stack.url}/api/v1/stations/{sid}", timeout=10)
    assert info["chunk_seconds"] == 60 and info["errors"] == []
    assert [round(e["seconds"], 1) for e in entries[:2]] == [60.0, 60.0]
    assert entries[0]["lead_in_s"] == 0 and entries[1]["lead_in_s"] > 0  # the second continues the first
    second = stored_chunk(stack, entries[1]["blob"])
    assert len(second) / RATE == pytest.approx(60.0 + entries[1]["lead_in_s"], abs=0.05)
    assert silent_runs(second) == []  # music all the way, past the 30 s window


# ---------------------------------------------------------------------- (b) restarts
def stored_chunk(stack: Stack, blob_id: str) -> np.ndarray:
    """A stored chunk, as 48 kHz mono (straight from GridFS)."""
    import gridfs
    import pymongo
    from bson import ObjectId

    db = pymongo.MongoClient(stack.mongo.url)[stack.server.env.get("G4L_MONGO_DB", "g4l")]
    data = gridfs.GridFSBucket(db, bucket_name="audio").open_download_stream(ObjectId(blob_id)).read()
    x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.resample(x.T, rate, RATE).mean(axis=0)


def test_the_stored_buffer_survives_a_packager_kill_and_a_full_restart_in_order(stack: Stack) -> None:
    st, sid = create(stack, prompt="lofi beats", chunk_seconds=10, buffer_thresholds_s=THRESHOLDS)
    r = stack.redis_client()
    wait_until(lambda: status(stack, sid)["buffer_state"] == "HEALTHY", 60, "a HEALTHY buffer")
    info = status(stack, sid)
    assert info["on_air"] and info["buffered_seconds"] >= 30 and info["buffer_thresholds_s"] == THRESHOLDS
    assert not info["generating"]  # HEALTHY: generation rests
    entries = [json.loads(e) for e in r.lrange(f"g4l:station:{sid}:chunks", 0, -1)]
    assert sum(e["seconds"] for e in entries) - float(r.hget(f"g4l:station:{sid}", "play_offset_s")) == \
        pytest.approx(info["buffered_seconds"], abs=0.6)

    def resumes_where_it_stopped(stop) -> None:
        """Stop the program with ``stop``: the new packager's program starts from storage at
        the saved play position (nothing heard twice, nothing skipped), and plays on."""
        saved = (lambda h: (int(h["play_seq"]), float(h["play_offset_s"])))(r.hgetall(f"g4l:station:{sid}"))
        stopped = time.time()
        stop()
        watcher = PlaylistWatcher(stack.url + st["playlist_url"]).start()
        try:
            started = wait_until(lambda: (lambda f: f if f and f["at"] > stopped else None)(
                json.loads(r.hget(f"g4l:station:{sid}", "feed_started") or "null")), 60, "the program back")
            wait_until(lambda: len(watcher.ordered()) >= 2 and
                       watcher.ordered()[-1].program_date_time.timestamp() > started["at"] + 6, 30, "6 s of it")
        finally:
            watcher.stop()
        print(f"\nsaved position: chunk {saved[0]} at {saved[1]:.2f} s; the program went on from chunk "
              f"{started['seq']} at {started['offset_s']:.2f} s, {started['at'] - stopped:.1f} s after the stop")
        # The position is saved every tick (0.5 s), so it may have moved on a little since
        # the test read it; it never goes back.
        assert started["seq"] == saved[0] and saved[1] <= started["offset_s"] <= saved[1] + 1.5 \
            or started["seq"] == saved[0] + 1 and started["offset_s"] == 0.0, (saved, started)
        t0, heard = program(watcher)[-1]
        begin = int(np.argmax(np.abs(heard) > 0.01)) + RATE // 10  # past the fade-in
        assert len(heard) - begin > 5 * RATE and silent_runs(heard[begin:]) == []  # and it plays on

    packager = child_pid(stack.server.proc.pid, "g4l.hls")
    assert packager is not None
    # The launcher starts the packager again under the dead one's name, so it takes the
    # stream's lease at once: the lease never lapses (a new name would wait out its TTL, and
    # listeners would hear that wait as a stall).
    lease = keys.stream_owner(st["playlist_url"].split("/")[-2])
    owner = r.get(lease)
    assert owner
    owners: list[str | None] = []
    stop_sampling = threading.Event()

    def sample_the_lease() -> None:
        while not stop_sampling.wait(0.1):
            owners.append(r.get(lease))

    sampler = threading.Thread(target=sample_the_lease, daemon=True)
    sampler.start()
    resumes_where_it_stopped(lambda: os.kill(packager, signal.SIGKILL))
    stop_sampling.set()
    sampler.join()
    assert child_pid(stack.server.proc.pid, "g4l.hls") not in (None, packager)
    assert owners and set(owners) == {owner}, sorted(set(map(str, owners)))
    resumes_where_it_stopped(lambda: stack.restart())
    sid_url = f"{stack.url}/api/v1/stations/{sid}"
    wait_until(lambda: len(json.loads(r.hget(f"g4l:station:{sid}", "played") or "[]")) >= 3, 60,
               "three chunks heard")
    played = json.loads(r.hget(f"g4l:station:{sid}", "played"))
    assert played == list(range(played[0], played[0] + len(played))), played  # in order, none lost or twice
    # Heard chunks are deleted from GridFS; the stored ones are all there.
    stored = {e["blob"] for e in (json.loads(x) for x in r.lrange(f"g4l:station:{sid}:chunks", 0, -1))}
    import pymongo

    files = pymongo.MongoClient(stack.mongo.url)["g4l"]["audio.files"]
    kept = {str(d["_id"]) for d in files.find({"metadata.station_id": sid, "metadata.kind": "station"})}
    assert stored <= kept and len(kept - stored) <= 1, (stored, kept)  # + the newest one (the next prompt)
    requests.delete(sid_url, timeout=10)
    wait_until(lambda: files.count_documents({"metadata.station_id": sid}) == 0, 20,
               "a stopped station's stored buffer to be deleted")


# ---------------------------------------------------------------------- (a) slow generator
@pytest.mark.alone  # the unpaced tiny model must outrun playback (tests/conftest.py)
def test_a_slow_generator_plays_the_buffer_down_through_every_state_then_the_slate(stack: Stack) -> None:
    # Back on the air only at 25 s (WARNING): two chunks after a depletion, not one.
    st, sid = create(stack, prompt="deep house", chunk_seconds=10, buffer_thresholds_s=THRESHOLDS,
                     buffer_resume_s=25)
    healthy = wait_until(lambda: (lambda s: s if s["buffer_state"] == "HEALTHY" else None)(status(stack, sid)), 60,
                         "a HEALTHY buffer (unpaced)")
    print(f"\nprefilled: {healthy['buffered_seconds']:.1f} s buffered, HEALTHY, rtf {healthy['realtime_factor']}")
    # The worker becomes a slow CPU box: a 10 s chunk now takes ~67 s. The new packager
    # plays the stored buffer on before the web is up, so until then the state is read
    # where the packager publishes it (the station's hash, what the status reports).
    restarting = threading.Thread(target=stack.restart, kwargs={"G4L_DEBUG_MODEL_RTF": "0.15"})
    restarting.start()
    restarted = time.time()
    states, depleted_at, watcher = ["HEALTHY"], 0.0, None
    r = stack.redis_client()
    try:
        deadline = time.monotonic() + 80
        while time.monotonic() < deadline:
            if restarting.is_alive():
                h = r.hgetall(f"g4l:station:{sid}")
                info = {"buffer_state": h.get("buffer_state"), "buffered_seconds": float(h.get("buffered_s") or 0),
                        "on_air": h.get("on_air") == "1", "realtime_factor": "(web restarting)"}
            else:
                watcher = watcher or PlaylistWatcher(stack.url + st["playlist_url"]).start()
                info = status(stack, sid)
            if not states or states[-1] != info["buffer_state"]:
                states.append(info["buffer_state"])
                print(f"{time.time() - restarted:5.1f} s  {info['buffer_state']:9s} buffered "
                      f"{info['buffered_seconds']:5.1f} s  on air {info['on_air']}  rtf {info['realtime_factor']}")
            if info["buffer_state"] == "DEPLETED":
                depleted_at = depleted_at or time.time()
                if time.time() > depleted_at + 6:
                    break
            time.sleep(0.5)
    finally:
        restarting.join()
        if watcher is not None:
            watcher.stop()
    assert depleted_at and watcher is not None, states
    assert states[-5:] == ["HEALTHY", "WARNING", "CRITICAL", "EMERGENCY", "DEPLETED"], states
    info = status(stack, sid)
    assert not info["on_air"] and info["buffer_health"] == "empty" and info["generating"]
    assert 0 < info["buffered_seconds"] < THRESHOLDS["emergency"]  # kept for later, not played
    assert info["realtime_factor"] is not None
    assert watcher.problems == [] and watcher.gaps() == []
    t0, heard = program(watcher)[-1]  # since the restart (an older run may still be listed)
    begin = int(np.argmax(np.abs(heard) > 0.01)) + RATE // 10
    off = int((depleted_at - t0) * RATE)
    # Played on without a gap: no silence from its first audio until the slate.
    gaps = [(s, n) for s, n in silent_runs(heard[begin: off - RATE])]
    assert gaps == [], gaps
    assert (off - begin) / RATE > 8  # it did play the stored buffer down for a while (as watched)
    # Then the slate: its tones, looping, not silence.
    slate = heard[off + 2 * RATE:]
    assert len(slate) >= 3 * RATE and silent_runs(slate) == []
    assert tones_of_the_slate(slate) > 20
    assert tones_of_the_slate(heard[begin: begin + 4 * RATE]) < 20  # the music is not the slate

    # The generator is fast again: the buffer refills off the air, and the program comes
    # back only at buffer_resume_s (hysteresis), from where it stopped (nothing was lost).
    saved = (lambda h: (int(h["play_seq"]), float(h["play_offset_s"])))(r.hgetall(f"g4l:station:{sid}"))
    stack.restart()
    seen = []
    back = wait_until(lambda: (lambda s: (seen.append((s["buffer_state"], s["on_air"], s["buffered_seconds"]))
                                          or (s if s["on_air"] else None)))(status(stack, sid)), 60, "on the air")
    print("refilling:", sorted(set(seen)))
    assert any(state in ("EMERGENCY", "CRITICAL") and not on_air for state, on_air, _ in seen), seen
    assert back["buffered_seconds"] >= 25 - 1.0
    started = json.loads(r.hget(f"g4l:station:{sid}", "feed_started"))
    assert (started["seq"], started["offset_s"]) == pytest.approx(saved, abs=0.01), (started, saved)
    requests.delete(f"{stack.url}/api/v1/stations/{sid}", timeout=10)


# ---------------------------------------------------------------------- the RTMP card
def test_the_rtmp_card_says_be_right_back_while_the_station_is_off_the_air(ctx, tmp_path) -> None:
    from g4l import keys
    from g4l.hls.outputs import StationOutputs
    from g4l.hls.rtmp import PROMPT_FILE
    from g4l.hls.stream import LiveStream

    stream = LiveStream("t" * 32, "station", "s1", ctx.settings.model_copy(update={"hls_dir": tmp_path}))
    outputs = StationOutputs(ctx, "s1", stream)  # the card of every output of the station
    ctx.redis.hset(keys.station("s1"), mapping={"name": "Night Shift", "generating_prompt": "deep house",
                                                "on_air": "1", "ever_on_air": "1"})
    outputs._refresh_card()
    assert (stream.directory / PROMPT_FILE).read_text() == "deep house"
    ctx.redis.hset(keys.station("s1"), "on_air", "0")  # DEPLETED: the slate plays
    outputs._refresh_card()
    assert (stream.directory / PROMPT_FILE).read_text() == "Be right back"
    outputs.close()
