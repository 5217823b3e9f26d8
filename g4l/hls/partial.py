"""Streamed generation on a live stream: one job's pieces (:mod:`g4l.jobs.partials`)
played as they arrive, joined without a seam.

A :class:`PartialFeed` takes a job's pieces in order (they may be handed over out of
order by the packager's threads), keeps from the first one on what its stream plays
(``begin``: e.g. a continuation's new audio after its prompt), resamples them to the
stream's 48 kHz with one streaming resampler (so the pieces resample as one signal) and
queues them: the first like any new audio (the stream's crossfade), the rest contiguously
(:meth:`LiveStream.append_contiguous`). After the last piece the job's whole output has
been queued; a job that fails or is cancelled midway leaves the stream with what was
queued, faded out by the buffer as any end of audio. When a piece never arrives the
packager appends the rest from the final result instead (:meth:`PartialFeed.rest_from`).

Usable by any driver of a stream (a station's included): make a feed, register it with
:meth:`g4l.hls.packager.Packager.follow` and ask for the job's pieces with
:func:`g4l.jobs.partials.want` before the job starts. A job that gives way and runs again
numbers its pieces from 0 again: :meth:`PartialFeed.follow_on` makes the feed that plays
the new run from where this one's audio stopped (a station's stretch; a session's new run
plays like a new generation).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import soxr

from g4l import audio
from g4l.hls.buffer import CHANNELS, RATE
from g4l.hls.stream import LiveStream
from g4l.jobs.partials import Piece

#: Resampled audio shorter than this many crossfades is held for the next piece (the
#: buffer's joins need each appended part longer than one crossfade).
MIN_PART_CROSSFADES = 2

#: ``begin(first_piece, stream)`` -> (the output sample from which the stream plays the
#: job, seconds of it that overlap what the stream queued before: crossfaded over it).
Begin = Callable[[Piece, LiveStream], tuple[int, float]]


def whole_output(piece: Piece, stream: LiveStream) -> tuple[int, float]:
    """Play the job's whole output (a bang, a one-shot generation)."""
    return 0, 0.0


def after_prompt(piece: Piece, stream: LiveStream) -> tuple[int, float]:
    """Play a continuation's new audio crossfaded over the end of what the stream queued,
    or (the stream has run dry) its whole output, prompt for context: what the packager
    appends of a spliced session result."""
    crossfade = stream.crossfade_frames
    if stream.buffer.buffered_frames > crossfade:
        lead = int(round(crossfade * piece.sample_rate / RATE))
        return max(0, piece.prompt_samples - lead), crossfade / RATE
    return 0, 0.0


def after_lead_in(lead_in_s: float) -> Begin:
    """Play a continuation from ``lead_in_s`` before its prompt's end, that lead-in
    crossfaded over the stream's end (a station stretch continuing the previous one)."""
    def begin(piece: Piece, stream: LiveStream) -> tuple[int, float]:
        lead = min(int(round(lead_in_s * piece.sample_rate)), piece.prompt_samples)
        return piece.prompt_samples - lead, lead / piece.sample_rate
    return begin


class PartialFeed:
    """One job's streamed pieces onto ``stream``.

    :param begin: where the stream starts playing the job (see :data:`Begin`).
    :param meta: remembered with the job's audio on the stream (``playing_meta``).
    """

    def __init__(self, stream: LiveStream, job_id: str, begin: Begin = whole_output,
                 meta: dict[str, Any] | None = None) -> None:
        self.stream, self.job_id, self.begin = stream, job_id, begin
        self.meta = dict(meta or {})
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[Piece, np.ndarray]] = {}
        self._next = 0
        self._resampler: Any = None
        self._channels = 0
        self._from = 0  # output sample where the stream's part of the job starts
        self._rate = 0
        self._overlap_s = 0.0
        self._held = np.zeros((CHANNELS, 0), np.float32)
        self._tail = np.zeros((CHANNELS, 0), np.float32)  # last frames queued (for the next join)
        #: 48 kHz frames of the job's output queued so far (from ``_from``), and whether
        #: any; the done event is set after the final piece (or when the feed is closed).
        self.queued_frames = 0
        self.started = False
        #: The final piece was taken (every piece queued), or the rest came from the result.
        self.finished = False
        #: The stream frame of the job's first frame queued (:attr:`PcmBuffer.last_new_frame`).
        self.start_frame: int | None = None
        #: The feed of the job's next run (:meth:`follow_on`), if it ran again.
        self.successor: PartialFeed | None = None
        self.done = threading.Event()
        self.closed = False
        self.updated = time.monotonic()
        #: When (and by which notice) the job's completion was seen with pieces missing.
        self.completed_at: float | None = None
        self.completion: dict[str, Any] | None = None

    @property
    def next_index(self) -> int:
        """The piece this feed waits for (0: none taken yet)."""
        return self._next

    def offer(self, piece: Piece, samples: np.ndarray) -> None:
        """Take piece ``piece.index`` (any order); queue every piece now in sequence."""
        with self._lock:
            if self.closed or piece.index < self._next:
                return
            self._waiting[piece.index] = (piece, samples)
            self.updated = time.monotonic()
            while self._next in self._waiting and not self.closed:
                self._take(*self._waiting.pop(self._next))
                self._next += 1

    def close(self) -> None:
        """Stop taking pieces (the job failed or was cancelled, or the rest came otherwise)."""
        with self._lock:
            self.closed = True
            self._waiting.clear()
        self.done.set()

    def _take(self, piece: Piece, samples: np.ndarray) -> None:
        if self._resampler is None:
            self._from, self._overlap_s = self.begin(piece, self.stream)
            self._rate, self._channels = piece.sample_rate, piece.channels
            self._resampler = soxr.ResampleStream(piece.sample_rate, RATE, piece.channels, dtype="float32",
                                                  quality="HQ")
        x = samples[:, max(0, self._from - piece.start):]
        y = self._resampler.resample_chunk(np.ascontiguousarray(x.T), last=piece.final).T
        y = audio.to_channels(np.ascontiguousarray(y, dtype=np.float32), CHANNELS)
        self._held = np.concatenate([self._held, y], axis=1)
        if piece.final or self._held.shape[1] >= MIN_PART_CROSSFADES * self.stream.buffer.crossfade_frames:
            self._queue(self._held)
            self._held = self._held[:, :0]
        if piece.final:
            self.closed = self.finished = True
            self.done.set()

    def _queue(self, y: np.ndarray) -> None:
        if y.shape[1] == 0:
            return
        if not self.started:
            self.stream.append(y, RATE, overlap_s=self._overlap_s, meta=self.meta)
            self.start_frame = self.stream.buffer.last_new_frame
            self.started = True
        else:
            self.stream.append_contiguous(y, self._tail, meta=self.meta)
        self.queued_frames += y.shape[1]
        self._tail = np.concatenate([self._tail, y], axis=1)[:, -self.stream.buffer.crossfade_frames:]

    def follow_on(self) -> PartialFeed:
        """Close this feed and return the one for the job's next run (it gave way and
        runs again from piece 0): it plays the new run from the output sample where this
        feed's queued audio ends, one crossfade's worth before it crossfaded over the
        stream's end (a new run need not repeat the first one's audio exactly), or from
        where this feed would have started if it queued nothing."""
        with self._lock:
            self.closed = True
            self._waiting.clear()
            started, first, rate, queued = self.started, self._from, self._rate, self.queued_frames
        self.done.set()
        if not started:
            successor = PartialFeed(self.stream, self.job_id, self.begin, self.meta)
        else:
            resume = first + int(round(queued * rate / RATE))

            def begin(piece: Piece, stream: LiveStream) -> tuple[int, float]:
                lead = min(int(round(stream.crossfade_frames * piece.sample_rate / RATE)), resume)
                return resume - lead, lead / piece.sample_rate
            successor = PartialFeed(self.stream, self.job_id, begin, self.meta)
        self.successor = successor
        return successor

    def latest(self) -> PartialFeed:
        """The feed of the job's latest run (this one unless it ran again)."""
        feed = self
        while feed.successor is not None:
            feed = feed.successor
        return feed

    def rest_from(self, output: np.ndarray, rate: int) -> bool:
        """Queue what the pieces did not of the job's ``output`` (the model's output from
        its start, at ``rate``; the way on when a piece went missing). Returns ``False``
        when no piece was queued at all: then the caller plays the result as without
        streaming."""
        with self._lock:
            if not self.started:
                return False
            y = audio.to_channels(audio.resample(output, rate, RATE), CHANNELS)
            begin = int(round(self._from * RATE / self._rate)) + self.queued_frames
            self._held = self._held[:, :0]
            if begin < y.shape[1]:
                self.stream.append_contiguous(y[:, begin:], self._tail, meta=self.meta)
            self.closed = self.finished = True
            self._waiting.clear()
        self.done.set()
        return True
