"""Streamed generation end to end: a real server batching jobs (``G4L_MAX_BATCH`` 8), a
session's listen stream, headless HLS reading (playlist polling, ffmpeg decoding).

- a continuation's audio is heard on the stream before its job completes (the order of
  the first audible segment and the job's ``completed`` notice, both seen by this test),
  and the program matches the final WAV, around every join between streamed pieces as
  well as elsewhere;
- a job cancelled mid-stream leaves the stream consistent (no gap, no click where its
  audio stops) and the next generation plays.

Seven other sessions bang at the same time so the batch is full (each job then takes a
few seconds on this CPU: the stream has time to play before the completion).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import redis
import requests
from conftest import ServerStack, make_wav, server_stack, wait_until

from g4l import audio
from g4l.hls.watch import PlaylistWatcher, decode_ts, max_step
from plugin_protocol import events
from plugin_protocol.client import DeviceClient

RATE = 48_000
OUTPUT_S = 20.0
MIX = 1.5  # as tests/test_hls.py: an equal-power crossfade may sum two signals' steps
ENV = {"G4L_MAX_BATCH": "8", "G4L_OUTPUT_SECONDS": str(int(OUTPUT_S)), "G4L_HLS_SESSION_PREROLL_S": "0"}


Server = ServerStack


@pytest.fixture(scope="module")
def srv(tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    with server_stack(tmp_path_factory.mktemp("streamed"), **ENV) as stack:
        yield stack


@dataclass
class Notices:
    """Every job notice, with when this test received it."""

    r: redis.Redis
    seen: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Notices:
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe("g4l:notices")

        def run() -> None:
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message and message["type"] == "message":
                    self.seen.append((time.time(), json.loads(message["data"])))
            pubsub.close()

        threading.Thread(target=run, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def of(self, job_id: str, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, n) for t, n in list(self.seen) if n.get("job_id") == job_id and n.get("type") == kind]

    def job_of(self, session_id: str, after: float) -> str | None:
        for t, n in list(self.seen):
            if t >= after and n.get("type") == "started" and n.get("session_id") == session_id:
                return str(n["job_id"])
        return None


def _listen(client: DeviceClient, sid: str) -> tuple[str, str]:
    since = client.mark()
    client.emit(events.GET_LISTEN_URL, {"session_id": sid})
    _, link = client.wait_for(events.LISTEN_URL, since, session_id=sid)
    return link["playlist_url"], link["playlist_url"].split("/")[2]


def _crowd(url: str, n: int) -> list[threading.Thread]:
    """``n`` other devices banging at once (not listened to: not streamed)."""
    def bang() -> None:
        with DeviceClient(url, timeout=120) as other:
            other.bang(make_wav(4, freq=330.0), model_name="debug", prompt_duration=2)
    threads = [threading.Thread(target=bang, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


_AUDIBLE: dict[str, bool] = {}


def _audible(uri: str, data: bytes) -> bool:
    """Whether a segment (``uri``: its absolute URL) is more than silence."""
    if uri not in _AUDIBLE:
        x = decode_ts(data)
        _AUDIBLE[uri] = bool(x.size) and float(np.sqrt(np.mean(x ** 2))) > 1e-3
    return _AUDIBLE[uri]


def _first_audible(watcher: PlaylistWatcher, after: float) -> float | None:
    """When the first audible segment listed after ``after`` appeared in the playlist."""
    for seg in watcher.ordered():
        if seg.seen_at >= after and _audible(watcher.base + seg.uri, seg.data):
            return seg.seen_at
    return None


def _align(program: np.ndarray, ref: np.ndarray) -> int:
    """Where ``ref`` starts in ``program`` (FFT cross-correlation of all but its first and
    last second: a short probe can match a repeating pattern elsewhere)."""
    probe, a = ref[0, RATE: -RATE], program[0]
    size = 1 << (a.shape[0] + probe.shape[0]).bit_length()
    xc = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(probe, size)), size)[: a.shape[0] - probe.shape[0]]
    return int(np.argmax(xc)) - RATE


# The batch of 8 must generate faster than the stream plays (else the stream runs dry and the
# program is filler where the WAV has music): with every xdist worker busy it does not.
@pytest.mark.alone
def test_a_listener_hears_a_generation_before_it_completes_and_it_matches_the_final_wav(srv: Server) -> None:
    r = srv.redis_client()
    notices = Notices(r).start()
    with DeviceClient(srv.url, timeout=120) as client:
        first = client.bang(make_wav(6), model_name="debug", prompt_duration=2)
        sid = first.session_id
        playlist, token = _listen(client, sid)
        watcher = PlaylistWatcher(srv.url + playlist, interval=0.1).start()
        try:
            wait_until(lambda: len(watcher.ordered()) >= 2, 30, "the stream to start (silence)")
            crowd = _crowd(srv.url, 7)
            sent = time.time()
            result = client.continue_(sid, first.audio)
            for t in crowd:
                t.join(120)
            job_id = result.job_id or notices.job_of(sid, sent)
            assert job_id
            wait_until(lambda: notices.of(job_id, "completed"), 10, "the completed notice")
            completed_at = notices.of(job_id, "completed")[0][0]
            started_at = notices.of(job_id, "started")[0][0]
            heard_at = wait_until(lambda: _first_audible(watcher, sent), 30, "audible segments")
            # Heard before the job completed: its audio went out while it was generated.
            assert heard_at < completed_at, (heard_at - started_at, completed_at - started_at)
            print(f"first audible segment {heard_at - started_at:.2f} s after processing_started; "
                  f"job completed after {completed_at - started_at:.2f} s")
            # Let the whole generation play, then compare it with the final WAV.
            pieces = [n for _, n in notices.of(job_id, "partial")]
            assert len(pieces) >= 5 and pieces[-1]["final"] and not any(p["final"] for p in pieces[:-1])
            # The seven unlistened jobs were not streamed (they pay nothing for it).
            others = [n for _, n in list(notices.seen) if n.get("type") == "partial" and n["job_id"] != job_id]
            assert others == []
            wait_until(lambda: sum(s.duration for s in watcher.ordered() if s.seen_at >= heard_at) > OUTPUT_S + 2,
                       60, "the whole generation to play")
        finally:
            watcher.stop()
            notices.stop()
    assert watcher.problems == [] and watcher.gaps() == []
    program = decode_ts(b"".join(s.data for s in watcher.ordered()))
    final = audio.decode_wav(result.audio, max_seconds=1e9)
    ref = audio.to_channels(audio.resample(audio.tail(final.samples, final.sample_rate, OUTPUT_S),
                                           final.sample_rate, RATE), 2)
    at = _align(program, ref)
    assert at >= 0 and at + ref.shape[1] <= program.shape[1] + RATE // 10
    ref = ref[:, : program.shape[1] - at]
    heard = program[:, at: at + ref.shape[1]]
    # Error power per 10 ms block, outside the fade-in and fade-out of the whole.
    block = RATE // 100
    err = ((heard - ref) ** 2).reshape(2, -1, block).mean(axis=(0, 2))[10:-10]
    sig = (ref ** 2).reshape(2, -1, block).mean(axis=(0, 2))[10:-10]
    snr = 10 * np.log10(sig.sum() / err.sum())
    joins = [int(round(p["end"] * RATE / p["sample_rate"])) // block - 10 for p in pieces[:-1]]
    joins = [j for j in joins if 2 <= j < err.shape[0] - 2]
    at_joins = np.array([err[j - 2: j + 2].sum() / sig[j - 2: j + 2].sum() for j in joins])
    elsewhere = np.array([err[j: j + 4].sum() / sig[j: j + 4].sum() for j in range(0, err.shape[0] - 4, 4)])
    print(f"program vs final WAV: SNR {snr:.1f} dB overall; at {len(joins)} joins worst "
          f"{-10 * np.log10(at_joins.max()):.1f} dB, median elsewhere {-10 * np.log10(np.median(elsewhere)):.1f} dB")
    assert len(joins) >= 5
    assert snr > 10.0, "the program is not the final WAV"
    # No seam: around every join the program is as close to the final WAV as anywhere.
    assert at_joins.max() <= np.quantile(elsewhere, 0.99) * 2
    for j in joins:
        s = (j + 10) * block + at
        around = program[:, s - RATE // 100: s + RATE // 100]
        body = program[:, s - RATE // 5: s + RATE // 5]
        assert max_step(around) <= max_step(body) * MIX
    # Nothing was appended again when the job completed: silence follows its audio.
    after = program[:, at + ref.shape[1] + RATE // 10:]
    assert after.shape[1] >= RATE // 2 and float(np.abs(after).max()) < 1e-2


def test_a_job_cancelled_mid_stream_leaves_the_stream_consistent(srv: Server) -> None:
    r = srv.redis_client()
    notices = Notices(r).start()
    with DeviceClient(srv.url, timeout=120) as client:
        first = client.bang(make_wav(6, freq=440.0), model_name="debug", prompt_duration=2)
        sid = first.session_id
        playlist, token = _listen(client, sid)
        watcher = PlaylistWatcher(srv.url + playlist, interval=0.1).start()
        try:
            wait_until(lambda: len(watcher.ordered()) >= 2, 30, "the stream to start (silence)")
            crowd = _crowd(srv.url, 7)
            sent = time.time()

            def doomed() -> None:
                with DeviceClient(srv.url, timeout=60) as other:
                    try:
                        other.continue_(sid, first.audio)
                    except Exception:
                        pass  # cancelled: the device hears of it as an error
            threading.Thread(target=doomed, daemon=True).start()
            job_id = wait_until(lambda: notices.job_of(sid, sent), 60, "the continuation to start")
            # Cancel once new audio (past the prompt) has been streamed.
            wait_until(lambda: [n for _, n in notices.of(job_id, "partial") if n["end"] > n["prompt_samples"]],
                       60, "new audio to be streamed")
            assert requests.delete(f"{srv.url}/api/v1/jobs/{job_id}", timeout=30).status_code == 200
            wait_until(lambda: notices.of(job_id, "canceled"), 30, "the cancellation")
            pieces = [n for _, n in notices.of(job_id, "partial")]
            assert pieces and not any(p["final"] for p in pieces)
            assert not notices.of(job_id, "completed")
            streamed_s = (pieces[-1]["end"] - pieces[0]["start"]) / pieces[0]["sample_rate"]
            assert streamed_s < OUTPUT_S - 1
            for t in crowd:
                t.join(120)
            # What was streamed plays out and fades; then the next generation plays.
            wait_until(lambda: sum(s.duration for s in watcher.ordered() if s.seen_at >= sent) > streamed_s + 3,
                       60, "the streamed part to play out")
            after = time.time()
            client.continue_(sid, first.audio)
            wait_until(lambda: _first_audible(watcher, after), 30, "the next generation on the stream")
            time.sleep(2.0)
        finally:
            watcher.stop()
            notices.stop()
    assert watcher.problems == [] and watcher.gaps() == []
    assert requests.get(f"{srv.url}/api/v1/jobs/{job_id}", timeout=10).json()["status"] == "canceled"
    program = decode_ts(b"".join(s.data for s in watcher.ordered()))
    block = RATE // 100
    rms = np.sqrt((program[:, : program.shape[1] // block * block] ** 2).reshape(2, -1, block).mean(axis=(0, 2)))
    loud = np.flatnonzero(rms > 1e-3)
    assert loud.size
    # The cancelled job's audio: from the first audible block to the first silent second.
    start = int(loud[0])
    silent = [i for i in range(start, rms.shape[0] - 100) if rms[i:i + 100].max() <= 1e-3]
    assert silent, "the cancelled job's audio never stopped"
    end = silent[0]
    assert (end - start) / 100 >= 1.0  # it played a while before stopping
    e = end * block
    around = program[:, e - RATE // 20: e + RATE // 100]
    body = program[:, e - RATE // 2: e - RATE // 10]
    assert max_step(around) <= max_step(body) * MIX, "a click where the cancelled audio stops"
    assert rms[end + 100:].max() > 1e-3, "the next generation played after it"


def test_a_one_shot_stream_plays_its_generation_as_it_is_made_once(srv: Server) -> None:
    r = srv.redis_client()
    notices = Notices(r).start()
    try:
        crowd = _crowd(srv.url, 7)
        started = requests.post(srv.url + "/api/stream/start", json={"text": "slow rain piano"}, timeout=30)
        assert started.status_code == 200, started.text
        job_id, playlist = started.json()["session_id"], started.json()["playlist_url"]
        watcher = PlaylistWatcher(srv.url + playlist, interval=0.1).start()
        try:
            wait_until(lambda: notices.of(job_id, "completed"), 120, "the one-shot generation")
            completed_at = notices.of(job_id, "completed")[0][0]
            heard_at = wait_until(lambda: _first_audible(watcher, 0.0), 30, "audible segments")
            pieces = [n for _, n in notices.of(job_id, "partial")]
            assert pieces and pieces[-1]["final"]
            assert heard_at < completed_at
            seconds = (pieces[-1]["end"] - pieces[0]["start"]) / pieces[0]["sample_rate"]
            wait_until(lambda: sum(s.duration for s in watcher.ordered() if s.seen_at >= heard_at) > seconds + 3,
                       90, "the whole generation to play")
            for t in crowd:
                t.join(120)
        finally:
            watcher.stop()
    finally:
        notices.stop()
    assert watcher.problems == [] and watcher.gaps() == []
    program = decode_ts(b"".join(s.data for s in watcher.ordered()))
    block = RATE // 100
    rms = np.sqrt((program[:, : program.shape[1] // block * block] ** 2).reshape(2, -1, block).mean(axis=(0, 2)))
    audible_s = float((rms > 1e-3).sum()) / 100
    # Played once: about its length (its fade-in and fade-out aside), not twice.
    assert seconds - 1.0 <= audible_s <= seconds + 0.5, (audible_s, seconds)
