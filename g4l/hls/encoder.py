"""One long-lived AAC-LC encoder per stream: ffmpeg fed raw PCM at wall-clock pace.

Encoding every generation separately would click at every join (each AAC stream starts
with encoder priming); one encoder for the stream's whole life encodes one continuous
signal. ffmpeg's ``segment`` muxer cuts MPEG-TS segments of ``segment_s`` and reports each
finished one on its stdout; this module renames the finished file into place (a player
never sees a half-written segment) and adds it to the :class:`LivePlaylist`.

Both loops run in real OS threads of the packager process (no gevent there): the feeder
takes audio from the :class:`PcmBuffer` as the wall clock advances, so segments appear in
real time; the reader turns ffmpeg's segment list into playlist entries. If ffmpeg dies it
is restarted, and the playlist marks the break with ``EXT-X-DISCONTINUITY``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

from g4l.hls.buffer import CHANNELS, RATE, PcmBuffer
from g4l.hls.playlist import LivePlaylist, segment_name
from g4l.log import get_logger
from g4l.media import FfmpegProcess, ffmpeg_binary

log = get_logger(__name__)

#: How far ahead of the wall clock audio is handed to ffmpeg (covers thread wake-up jitter).
LEAD_S = 0.1
TICK_S = 0.02


class SegmentEncoder:
    """Feeds a stream's buffer through ffmpeg into segments and the live playlist.

    :param directory: where segments are written.
    :param buffer: the audio to play (filler when empty).
    :param playlist: receives every finished segment.
    :param segment_s: segment length in seconds.
    :param bitrate_kbps: AAC bitrate.
    :param on_segment: called ``(sequence, duration)`` after a segment is listed.
    :param stream: name used in log lines.
    """

    def __init__(self, directory: Path, buffer: PcmBuffer, playlist: LivePlaylist, *, segment_s: float,
                 bitrate_kbps: int, on_segment: Callable[[int, float], None] | None = None,
                 stream: str = "") -> None:
        self.directory = directory
        self.buffer = buffer
        self.playlist = playlist
        self.segment_s = segment_s
        self.bitrate_kbps = bitrate_kbps
        self.on_segment = on_segment
        self.log = log.bind(stream=stream)
        self._stop = threading.Event()
        self._proc: FfmpegProcess | None = None
        self._feeder: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wall0 = dt.datetime.now(dt.UTC)
        self.restarts = 0
        #: Called with every block of PCM (s16le, 48 kHz stereo) as it is handed to the
        #: encoder, in the feeding thread: a station's RTMP outputs take the same audio.
        #: A tap must never block.
        self.taps: list[Callable[[bytes], None]] = []
        #: Silence encoded at once when a stream starts from nothing, back-dated, so that
        #: its first playlist already spans three target durations (no waiting for a full
        #: window). The buffer's frame 0 is this many frames into the encoded stream.
        self.prefill_frames = 0 if playlist.entries else int(
            (3 * playlist.target + 2 * segment_s) * RATE)

    # ------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Start ffmpeg and the feeding thread."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._feeder = threading.Thread(target=self._feed_forever, name=f"hls-feed-{self.directory.name[:8]}",
                                        daemon=True)
        self._feeder.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop feeding; ffmpeg finishes the segment in progress and exits."""
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(timeout)

    def _spawn(self) -> FfmpegProcess:
        cmd = [
            ffmpeg_binary(), "-hide_banner", "-loglevel", "error",
            "-f", "s16le", "-ar", str(RATE), "-ac", str(CHANNELS), "-i", "pipe:0", "-map", "0:a",
            "-c:a", "aac", "-profile:a", "aac_low", "-b:a", f"{self.bitrate_kbps}k", "-threads", "1",
            "-f", "segment", "-segment_format", "mpegts", "-segment_time", f"{self.segment_s:.6f}",
            "-segment_start_number", str(self.playlist.next_sequence),
            "-segment_list", "pipe:1", "-segment_list_type", "csv", "-segment_list_flags", "+live",
            str(self.directory / "seg_%06d.part"),
        ]
        proc = FfmpegProcess(cmd, name=f"hls-list-{self.directory.name[:8]}", stderr_log=self.directory / ".ffmpeg.log",
                             read_stdout=self._read_segments)
        proc.start()
        return proc

    # ------------------------------------------------------------ the two loops
    def _feed_forever(self) -> None:
        while not self._stop.is_set():
            proc = self._spawn()
            self._proc = proc
            try:
                self._feed(proc)
            except (BrokenPipeError, OSError, ValueError) as exc:
                self.log.warning("encoder input closed", error=str(exc)[:200])
            finally:
                proc.stop(deadline_s=10, join_s=5)
            if self._stop.is_set():
                break
            self.restarts += 1
            self.log.error("encoder exited; restarting it", code=proc.returncode, stderr=proc.last_words(500),
                           restarts=self.restarts)
            with self._lock:
                self.playlist.mark_break()
            for part in self.directory.glob("seg_*.part"):
                part.unlink(missing_ok=True)
            time.sleep(min(5.0, 0.5 * self.restarts))

    def _feed(self, proc: FfmpegProcess) -> None:
        prefill = self.prefill_frames if self.restarts == 0 else 0
        t0 = time.monotonic() - prefill / RATE
        self._wall0 = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=prefill / RATE)
        lead = int(LEAD_S * RATE)
        if prefill:
            proc.write(bytes(prefill * CHANNELS * 2))  # s16le silence
        written = prefill
        while not self._stop.is_set():
            if not proc.running:
                raise BrokenPipeError(f"ffmpeg exited with code {proc.returncode}")
            due = int((time.monotonic() - t0) * RATE) + lead
            if due - written > RATE * 2:  # the process was stalled: do not burst, skip ahead
                self.log.warning("feeder fell behind; skipping", seconds=round((due - written) / RATE, 2))
                written = due - lead
            while written < due:
                n = min(due - written, RATE // 10)
                pcm = self.buffer.take(n)
                data = (np.clip(pcm.T, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
                proc.write(data)
                for tap in list(self.taps):
                    tap(data)
                written += n
            time.sleep(TICK_S)

    def _read_segments(self, stdout: IO[bytes]) -> None:
        """ffmpeg's segment list (``name,start,end`` a finished segment): each segment is
        renamed into place and listed."""
        wall0 = None
        for raw in stdout:
            if wall0 is None:
                wall0 = self._wall0
            try:
                name, start, end = raw.decode().strip().rsplit(",", 2)
                sequence = int(Path(name).stem.split("_", 1)[1])
                start_s, end_s = float(start), float(end)
            except (ValueError, IndexError):
                self.log.warning("unexpected segment list line", line=raw[:200])
                continue
            part = self.directory / f"seg_{sequence:06d}.part"
            final = self.directory / segment_name(sequence)
            try:
                part.replace(final)  # atomic: the segment appears complete or not at all
            except FileNotFoundError:
                continue  # the stream was stopped and its folder removed
            duration = end_s - start_s
            with self._lock:
                try:
                    self.playlist.add(sequence, duration, wall0 + dt.timedelta(seconds=start_s))
                except FileNotFoundError:
                    continue
            if self.on_segment is not None:
                self.on_segment(sequence, duration)

    @property
    def wall_start(self) -> dt.datetime:
        """Wall-clock time of the current encoder's first sample."""
        return self._wall0
