"""The audio a live stream has yet to play, and what plays when there is none.

A :class:`PcmBuffer` holds 48 kHz stereo float32 audio. The encoder thread takes a few
milliseconds at a time, at wall-clock pace; generations are appended whenever they are
ready. Every join is click-free:

- new audio arriving while older audio is still queued is crossfaded (equal power) into
  the queue's unplayed tail, so the join is made before anyone hears it;
- when the queue runs dry, its last frames fade out (the buffer never plays its last
  ``crossfade`` frames until it knows whether more audio follows) and silence, or a
  seamless loop of the last seconds heard, fills the gap;
- audio arriving during such a gap fades (or crossfades out of the loop) in.

Pure numpy and a lock: no I/O, safe to call from any thread.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from g4l import audio

#: The stream's fixed format: what the AAC encoder is fed.
RATE = 48_000
CHANNELS = 2
FILL_MODES = ("silence", "loop")


@dataclass(frozen=True)
class Marker:
    """Metadata of appended audio and the stream frame at which it starts playing."""

    frame: int
    meta: dict[str, Any] = field(default_factory=dict)


def _fade(x: np.ndarray, n: int, *, out: bool) -> np.ndarray:
    """Equal-power fade over the first (``out=False``) or last ``n`` frames of ``x``."""
    n = min(n, x.shape[1])
    if n == 0:
        return x
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    ramp = (np.cos(t * np.pi / 2) if out else np.sin(t * np.pi / 2)).astype(np.float32)
    y = x.copy()
    if out:
        y[:, -n:] *= ramp
    else:
        y[:, :n] *= ramp
    return y


def seamless_loop(x: np.ndarray, crossfade_frames: int) -> np.ndarray:
    """A loop body that can be repeated end to start without a click.

    The last ``crossfade_frames`` of ``x`` are crossfaded into its first ones and the body
    starts right after them, so ``concat(body, body)`` is continuous. Returns
    ``len(x) - crossfade_frames`` frames.
    """
    n = min(crossfade_frames, x.shape[1] // 2)
    if n == 0:
        return x
    joint = audio.crossfade(x[:, -n:], x[:, :n], RATE, n / RATE)
    return np.concatenate([x[:, n:-n], joint], axis=1)


class PcmBuffer:
    """Queued audio plus the filler that plays while the queue is empty.

    :param crossfade_frames: length of every crossfade, fade-in and fade-out.
    :param fill: ``"silence"`` or ``"loop"`` (repeat the last ``loop_frames`` heard).
    :param loop_frames: how much recent audio a held loop repeats.
    """

    def __init__(self, crossfade_frames: int = 2400, fill: str = "silence", loop_frames: int = 4 * RATE) -> None:
        if fill not in FILL_MODES:
            raise ValueError(f"fill must be one of {FILL_MODES}, got {fill!r}")
        self.crossfade_frames = max(1, int(crossfade_frames))
        self.fill = fill
        self.loop_frames = int(loop_frames)
        self._lock = threading.Lock()
        self._pending = np.zeros((CHANNELS, 0), np.float32)
        self._real = 0  # frames at the front of _pending that are real (generated) audio
        self._loop: np.ndarray | None = None
        self._history: deque[np.ndarray] = deque()
        self._history_frames = 0
        self._markers: list[Marker] = []
        self._slate: np.ndarray | None = None
        #: See :meth:`append`.
        self.last_new_frame = 0
        #: Frames handed to the encoder so far: the stream clock.
        self.position = 0
        #: Times the queue ran dry while audio had been playing.
        self.underruns = 0
        self.playing = False

    # ------------------------------------------------------------ producer side
    def append(self, samples: np.ndarray, *, overlap_frames: int = 0, meta: dict[str, Any] | None = None,
               join: str = "crossfade") -> int:
        """Queue ``samples`` (float32 ``(2, frames)`` at :data:`RATE`) after what is queued.

        :param overlap_frames: how many leading frames of ``samples`` re-state the end of
            the previous audio (a continuation's re-decoded prompt); they are crossfaded
            over the queue's tail instead of being played twice. Without it a crossfade of
            ``crossfade_frames`` is used.
        :param meta: remembered with the stream frame at which this audio starts (see
            :meth:`playing_meta`).
        :param join: ``"crossfade"`` (above); ``"butt"``: ``samples`` follow the queue
            exactly, no frame mixed (the next piece of one recording); ``"fade"``: the
            queue's tail fades out and ``samples`` fade in, butted (around a break).
        :returns: the stream frame at which the new audio starts. :attr:`last_new_frame`
            is then the stream frame of ``samples[overlap_frames]`` (its first new frame).
        """
        x = np.ascontiguousarray(samples, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] != CHANNELS:
            raise ValueError(f"expected ({CHANNELS}, frames) samples, got {x.shape}")
        if x.shape[1] == 0:
            return self.position
        with self._lock:
            xf = self.crossfade_frames
            if self._real > 0 and join != "crossfade":
                base = self._pending[:, : self._real]
                if join == "fade":
                    base, x = _fade(base, xf, out=True), _fade(x, xf, out=False)
                start = self.position + base.shape[1]
                self.last_new_frame = start + overlap_frames
                joined = np.concatenate([base, x], axis=1)
            elif self._real > 0:
                base = self._pending[:, : self._real]
                n = min(overlap_frames or xf, base.shape[1], x.shape[1])
                start = self.position + base.shape[1] - n
                self.last_new_frame = start + overlap_frames
                joined = audio.crossfade(base, x, RATE, n / RATE)
            else:
                cut = min(overlap_frames, max(x.shape[1] - xf, 0))
                x = x[:, cut:]
                filler = self._pending[:, : min(xf, self._pending.shape[1])]
                if filler.shape[1] and np.any(filler):  # a held loop is playing: crossfade out of it
                    start = self.position
                    joined = audio.crossfade(filler, x, RATE, filler.shape[1] / RATE)
                else:
                    start = self.position + filler.shape[1]
                    joined = np.concatenate([filler, _fade(x, xf, out=False)], axis=1)
                self.last_new_frame = start + overlap_frames - cut
            self._pending = joined
            self._real = joined.shape[1]
            self._markers.append(Marker(start, dict(meta or {})))
            self._markers = self._markers[-64:]
            return start

    # ------------------------------------------------------------ consumer side
    def take(self, frames: int) -> np.ndarray:
        """The next ``frames`` to encode, always exactly that many (filler when short)."""
        with self._lock:
            xf = self.crossfade_frames
            if self._real >= frames + xf:
                out = self._pending[:, :frames]
                self._pending = self._pending[:, frames:]
                self._real -= frames
                self._remember(out)
                self.playing = True
            else:
                if self._real > 0:  # running dry: play what is left, faded, then fill
                    self._begin_fill()
                out = self._filler(frames)
            self.position += frames
            return out

    def _begin_fill(self) -> None:
        tail = self._pending[:, : self._real]
        self._remember(tail)
        self.underruns += 1
        self.playing = False
        loop = self._make_loop()
        if loop is not None:
            reps = max(2, int(np.ceil(RATE / loop.shape[1])) + 1)
            self._pending = audio.crossfade(tail, np.tile(loop, (1, reps)), RATE, self.crossfade_frames / RATE)
        else:
            self._pending = _fade(tail, self.crossfade_frames, out=True)
        self._real = 0

    def _make_loop(self) -> np.ndarray | None:
        if self.fill != "loop" or self._history_frames < RATE // 2:
            return None
        recent = np.concatenate(list(self._history), axis=1)[:, -self.loop_frames:]
        self._loop = seamless_loop(recent, self.crossfade_frames)
        return self._loop

    def _filler(self, frames: int) -> np.ndarray:
        while self._pending.shape[1] < frames:
            more = self._loop if (self.fill == "loop" and self._loop is not None) else self._slate
            if more is None:
                more = np.zeros((CHANNELS, frames - self._pending.shape[1]), np.float32)
            self._pending = np.concatenate([self._pending, more], axis=1)
        out = self._pending[:, :frames]
        self._pending = self._pending[:, frames:]
        if self.fill != "loop":
            self._pending = self._pending[:, :0] if not np.any(self._pending) else self._pending
        return out

    def _remember(self, x: np.ndarray) -> None:
        if self.fill != "loop" or x.shape[1] == 0:
            return
        self._history.append(x)
        self._history_frames += x.shape[1]
        while self._history and self._history_frames - self._history[0].shape[1] >= self.loop_frames:
            self._history_frames -= self._history.popleft().shape[1]

    # ------------------------------------------------------------ off the air
    def interrupt(self, slate: np.ndarray | None) -> int:
        """Take the program off the air: the queued audio fades out over one crossfade and
        is dropped, and ``slate`` (a seamless loop, or None for silence) plays until audio
        is appended again (then it crossfades out of the slate).

        :returns: how many queued frames were dropped (never heard).
        """
        with self._lock:
            keep = min(self._real, self.crossfade_frames)
            dropped = self._real - keep
            tail = _fade(self._pending[:, :keep], keep, out=True)
            self._slate = None if slate is None else np.ascontiguousarray(slate, dtype=np.float32)
            if self._slate is not None and keep:
                head = self._slate[:, : min(keep, self._slate.shape[1])]
                tail = audio.crossfade(tail, np.tile(self._slate, (1, 2)), RATE, head.shape[1] / RATE)
            elif self._slate is not None:
                tail = np.tile(self._slate, (1, 2))
            self._pending = tail
            self._real = 0
            self.playing = False
            return dropped

    def resume(self) -> None:
        """Stop looping the slate; audio appended next crossfades out of it."""
        with self._lock:
            self._slate = None

    # ------------------------------------------------------------ status
    @property
    def buffered_frames(self) -> int:
        """Frames of generated audio queued and not yet played."""
        return self._real

    @property
    def buffered_seconds(self) -> float:
        return self._real / RATE

    def playing_meta(self) -> dict[str, Any] | None:
        """The ``meta`` of the audio now being played (None before any audio)."""
        with self._lock:
            current = None
            for marker in self._markers:
                if marker.frame <= self.position:
                    current = marker.meta
            return current
