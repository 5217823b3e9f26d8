"""A reference HLS listener: polls a live playlist, checks it, downloads every segment.

Used by the tests, ``scripts/bench_hls`` and ``scripts/soak_station`` to look at a stream
the way a player does. :func:`check_playlist` states the rules a live playlist must keep;
:func:`decode_ts` decodes MPEG-TS bytes with ffmpeg.
"""

from __future__ import annotations

import datetime as dt
import itertools
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import m3u8
import numpy as np


@dataclass
class Segment:
    """A downloaded segment and when it first appeared in the playlist."""

    sequence: int
    uri: str
    duration: float
    program_date_time: dt.datetime | None
    discontinuity: bool
    data: bytes
    seen_at: float


def fetch(url: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """GET ``url``: (status, headers, body); HTTP errors are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def check_playlist(pl: m3u8.M3U8, *, min_window_targets: float = 3.0) -> list[str]:
    """Problems with a live media playlist (empty list when it keeps every rule)."""
    problems: list[str] = []
    target = pl.target_duration
    if not target:
        return ["no EXT-X-TARGETDURATION"]
    if pl.is_endlist:
        problems.append("a live playlist must not have EXT-X-ENDLIST")
    if pl.media_sequence is None:
        problems.append("no EXT-X-MEDIA-SEQUENCE")
    for seg in pl.segments:
        if seg.duration is None or seg.duration > target or round(seg.duration) > target:
            problems.append(f"{seg.uri}: EXTINF {seg.duration} exceeds the target duration {target}")
        if seg.program_date_time is None:
            problems.append(f"{seg.uri}: no EXT-X-PROGRAM-DATE-TIME")
    total = sum(s.duration or 0 for s in pl.segments)
    if pl.segments and total < min_window_targets * target:
        problems.append(f"window {total:.2f} s is under {min_window_targets:g} target durations ({target} s)")
    times = [s.program_date_time for s in pl.segments if s.program_date_time is not None]
    if any(b <= a for a, b in itertools.pairwise(times)):
        problems.append("EXT-X-PROGRAM-DATE-TIME is not increasing")
    return problems


class PlaylistWatcher:
    """Polls ``playlist_url`` in a thread, checking each version and keeping every segment.

    :param playlist_url: absolute URL of ``index.m3u8``.
    :param interval: seconds between polls.
    :param keep_data: keep segment bytes (else only their metadata).
    """

    def __init__(self, playlist_url: str, interval: float = 0.25, keep_data: bool = True) -> None:
        self.url = playlist_url
        self.base = playlist_url.rsplit("/", 1)[0] + "/"
        self.interval = interval
        self.keep_data = keep_data
        self.segments: dict[int, Segment] = {}
        self.problems: list[str] = []
        self.polls = 0
        self.last_sequence: int | None = None
        self.last_discontinuity_sequence = 0
        self.playlists: list[m3u8.M3U8] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> PlaylistWatcher:
        self._thread = threading.Thread(target=self._run, daemon=True, name="playlist-watcher")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # keep watching; record what went wrong
                self.problems.append(f"poll failed: {type(exc).__name__}: {exc}")
            self._stop.wait(self.interval)

    def poll(self) -> m3u8.M3U8 | None:
        """Fetch and check the playlist once; download segments not seen before."""
        status, headers, body = fetch(self.url)
        if status == 404:
            return None
        if status != 200:
            self.problems.append(f"playlist answered {status}")
            return None
        pl = m3u8.loads(body.decode(), uri=self.url)
        now = time.time()
        self.polls += 1
        for problem in check_playlist(pl):
            self.problems.append(problem)
        seq = int(pl.media_sequence or 0)
        if self.last_sequence is not None and seq < self.last_sequence:
            self.problems.append(f"media sequence went back from {self.last_sequence} to {seq}")
        dseq = int(pl.discontinuity_sequence or 0)
        if dseq < self.last_discontinuity_sequence:
            self.problems.append("discontinuity sequence went back")
        self.last_sequence, self.last_discontinuity_sequence = seq, dseq
        with self._lock:
            if len(self.playlists) < 10_000:
                self.playlists.append(pl)
        for i, seg in enumerate(pl.segments):
            number = seq + i
            if number in self.segments:
                if self.segments[number].uri != seg.uri:
                    self.problems.append(f"sequence {number} changed from {self.segments[number].uri} to {seg.uri}")
                continue
            s_status, _h, data = fetch(self.base + str(seg.uri))
            if s_status != 200:
                self.problems.append(f"listed segment {seg.uri} answered {s_status}")
                continue
            with self._lock:
                self.segments[number] = Segment(number, str(seg.uri), float(seg.duration or 0),
                                                seg.program_date_time, bool(seg.discontinuity),
                                                data if self.keep_data else b"", now)
        return pl

    def gaps(self) -> list[int]:
        """Media sequence numbers never seen between the first and last one seen."""
        with self._lock:
            numbers = sorted(self.segments)
        if not numbers:
            return []
        return sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))

    def ordered(self) -> list[Segment]:
        with self._lock:
            return [self.segments[n] for n in sorted(self.segments)]


def decode_ts(data: bytes, rate: int = 48_000, channels: int = 2) -> np.ndarray:
    """Decode MPEG-TS (AAC) bytes with ffmpeg into float32 ``(channels, frames)``.

    :raises RuntimeError: ffmpeg could not decode them.
    """
    proc = subprocess.run(["ffmpeg", "-v", "error", "-f", "mpegts", "-i", "pipe:0", "-f", "f32le", "-ac",
                           str(channels), "-ar", str(rate), "pipe:1"], input=data, capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not decode: {proc.stderr.decode(errors='replace')[-300:]}")
    return np.frombuffer(proc.stdout, np.float32).reshape(-1, channels).T.copy()


def max_step(x: np.ndarray) -> float:
    """The largest sample-to-sample jump of any channel (a click shows up here)."""
    if x.shape[-1] < 2:
        return 0.0
    return float(np.abs(np.diff(x, axis=-1)).max())
