"""The sliding-window live playlist of one stream, written with the ``m3u8`` package.

Rules it keeps (RFC 8216):

- ``EXT-X-TARGETDURATION`` is fixed for the stream's life and no segment's duration
  exceeds it (even unrounded);
- the window holds at least three target durations of segments;
- ``EXT-X-MEDIA-SEQUENCE`` only grows, also across restarts (the playlist on disk is read
  back); ``EXT-X-DISCONTINUITY`` marks only a real break of the timeline (the encoder
  restarted), and ``EXT-X-DISCONTINUITY-SEQUENCE`` counts the ones that left the window;
- every segment carries ``EXT-X-PROGRAM-DATE-TIME`` (wall clock of its first sample);
- the playlist is replaced atomically (temporary file + rename) and a segment file is
  deleted only a few segments after it left the window (a player may still be fetching it).
"""

from __future__ import annotations

import datetime as dt
import math
import os
from dataclasses import dataclass
from pathlib import Path

import m3u8

from g4l.log import get_logger

log = get_logger(__name__)

PLAYLIST_NAME = "index.m3u8"
#: Segments kept on disk after leaving the window, for players still fetching them.
DELETE_GRACE_SEGMENTS = 3


def segment_name(sequence: int) -> str:
    """The file name of the segment with media sequence number ``sequence``."""
    return f"seg_{sequence:06d}.ts"


@dataclass
class Entry:
    """One segment in the window."""

    sequence: int
    duration: float
    start: dt.datetime
    discontinuity: bool = False

    @property
    def name(self) -> str:
        return segment_name(self.sequence)


#: An AAC-LC frame: 1024 samples at the stream's 48 kHz. Segments are cut on frame bounds.
AAC_FRAME = 1024
AAC_RATE = 48_000


def aac_segment_seconds(segment_s: float) -> float:
    """``segment_s`` rounded down to whole AAC frames (1.0 -> 0.981333: 46 frames), in
    whole microseconds, rounded down too (what ffmpeg's ``-segment_time`` takes).

    The segment muxer cuts at the first frame at or after each multiple of its
    ``segment_time``: asked for 2.0 s it cut 2.005 s segments (94 frames), whose target
    duration had to be 3, and hls.js, which stays three target durations behind the live
    edge, played 9.6 s late. Cut on a frame bound, every segment lasts exactly this, so
    the target duration is this rounded up (1 for the default 1.0)."""
    frames = max(1, math.floor(segment_s * AAC_RATE / AAC_FRAME + 1e-9))
    return math.floor(frames * AAC_FRAME / AAC_RATE * 1e6) / 1e6


def target_duration(segment_s: float) -> int:
    """The fixed target duration of segments cut every ``segment_s`` (see
    :func:`aac_segment_seconds`): no segment is longer than the aligned length."""
    return max(1, math.ceil(aac_segment_seconds(segment_s) - 1e-6))


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a reader sees the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class LivePlaylist:
    """The window of a stream's newest segments and the file that lists them.

    :param directory: the stream's folder (segments and ``index.m3u8``).
    :param segment_s: the segment length asked for (``G4L_HLS_SEGMENT_S``); segments last
        :attr:`segment_s`, that rounded down to whole AAC frames.
    :param window: how many segments the playlist lists (raised to cover three target
        durations when too small).
    """

    def __init__(self, directory: Path, segment_s: float, window: int) -> None:
        self.directory = directory
        self.segment_s = aac_segment_seconds(segment_s)
        self.target = target_duration(segment_s)
        self.window = max(window, math.ceil(3 * self.target / self.segment_s) + 1)
        self.entries: list[Entry] = []
        self.discontinuity_sequence = 0
        self.next_sequence = 0
        self._break_pending = False
        self._load()

    @property
    def path(self) -> Path:
        return self.directory / PLAYLIST_NAME

    def _load(self) -> None:
        """Continue the numbering of a playlist left by a previous run (restart)."""
        if not self.path.exists():
            return
        try:
            old = m3u8.load(str(self.path))
        except Exception as exc:
            log.warning("unreadable playlist ignored", path=str(self.path), error=str(exc)[:200])
            return
        seq = int(old.media_sequence or 0)
        self.discontinuity_sequence = int(old.discontinuity_sequence or 0)
        for seg in old.segments:
            if (self.directory / str(seg.uri)).exists() and seg.program_date_time is not None:
                self.entries.append(Entry(seq, float(seg.duration or 0.0), seg.program_date_time,
                                          bool(seg.discontinuity)))
            seq += 1
        self.next_sequence = seq
        self._break_pending = bool(self.entries)

    def mark_break(self) -> None:
        """The next segment does not continue the previous one (encoder restarted)."""
        self._break_pending = bool(self.entries)

    def add(self, sequence: int, duration: float, start: dt.datetime) -> None:
        """Append a finished segment and rewrite the playlist."""
        self.entries.append(Entry(sequence, duration, start, self._break_pending))
        self._break_pending = False
        self.next_sequence = sequence + 1
        while len(self.entries) > self.window:
            if self.entries.pop(0).discontinuity:
                self.discontinuity_sequence += 1
        # A live playlist must span three target durations; until the first segments of
        # a new stream do, players get a 404 and retry rather than a too-short window.
        if sum(e.duration for e in self.entries) >= 3 * self.target or len(self.entries) >= self.window:
            self.write()
        self._delete_old()

    def render(self) -> str:
        """The playlist text."""
        pl = m3u8.M3U8()
        pl.version = 3
        pl.target_duration = self.target
        pl.media_sequence = self.entries[0].sequence if self.entries else self.next_sequence
        if self.discontinuity_sequence:
            pl.discontinuity_sequence = self.discontinuity_sequence
        for e in self.entries:
            pl.segments.append(m3u8.Segment(uri=e.name, duration=round(e.duration, 6), program_date_time=e.start,
                                            discontinuity=e.discontinuity))
        text = pl.dumps()
        if "#EXT-X-MEDIA-SEQUENCE:" not in text:  # m3u8 leaves out a 0; players and checkers like it said
            text = text.replace("#EXTM3U\n", f"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:{pl.media_sequence}\n", 1)
        return text

    def write(self) -> None:
        write_atomic(self.path, self.render().encode())

    def _delete_old(self) -> None:
        if not self.entries:
            return
        keep_from = self.entries[0].sequence - DELETE_GRACE_SEGMENTS
        for path in self.directory.glob("seg_*.ts"):
            try:
                if int(path.stem[4:]) < keep_from:
                    path.unlink(missing_ok=True)
            except ValueError:
                continue

    def newest_end(self) -> dt.datetime | None:
        """Wall-clock time at which the newest segment ends."""
        if not self.entries:
            return None
        last = self.entries[-1]
        return last.start + dt.timedelta(seconds=last.duration)
