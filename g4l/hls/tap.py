"""The program audio of a stream, handed from its encoder's feeding thread to another
consumer (an RTMP output, a recorder) without ever blocking the feeder.

:class:`g4l.hls.encoder.SegmentEncoder` calls every tap with each block of PCM (s16le,
48 kHz stereo) it encodes; a :class:`PcmQueue` keeps the newest ``max_s`` seconds of it
for a consumer thread, dropping the oldest when that consumer falls behind (an ffmpeg that
is reconnecting, say).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from g4l.context import Context
from g4l.hls.buffer import CHANNELS, RATE
from g4l.hls.stream import LiveStream


class PcmQueue:
    """Blocks of PCM between the feeder (:meth:`put`) and one consumer (:meth:`take`).

    :param max_s: how much audio is kept at most; older blocks are dropped.
    """

    def __init__(self, max_s: float) -> None:
        self.max_bytes = int(max_s * RATE) * CHANNELS * 2
        self._blocks: deque[bytes] = deque()
        self._size = 0
        self._cond = threading.Condition()
        self.dropped_bytes = 0

    def put(self, pcm: bytes) -> None:
        """Queue a block; never blocks."""
        with self._cond:
            self._blocks.append(pcm)
            self._size += len(pcm)
            while self._size > self.max_bytes and len(self._blocks) > 1:
                old = self._blocks.popleft()
                self._size -= len(old)
                self.dropped_bytes += len(old)
            self._cond.notify()

    def take(self, timeout: float) -> list[bytes]:
        """Every queued block, oldest first (waits up to ``timeout`` for one)."""
        with self._cond:
            if not self._blocks:
                self._cond.wait(timeout)
            blocks = list(self._blocks)
            self._blocks.clear()
            self._size = 0
            return blocks

    def wake(self) -> None:
        """Wake a consumer waiting in :meth:`take` (it is stopping)."""
        with self._cond:
            self._cond.notify_all()


class StationTap:
    """Something that takes station ``station_id``'s program audio (its RTMP outputs, its
    recorder): handed every block its stream's encoder encodes, while attached.

    :param ctx: stores and settings.
    :param station_id: the station.
    :param stream: its running stream (the audio is tapped from its encoder).
    """

    def __init__(self, ctx: Context, station_id: str, stream: LiveStream) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.station_id = station_id
        self.stream = stream

    def attach(self, tap: Callable[[bytes], None]) -> None:
        """Hand ``tap`` every block of PCM from now on (it must never block)."""
        self.stream.encoder.taps.append(tap)

    def detach(self, tap: Callable[[bytes], None]) -> None:
        """No more audio for ``tap`` (attached or not)."""
        if tap in self.stream.encoder.taps:
            self.stream.encoder.taps.remove(tap)
