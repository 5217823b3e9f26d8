"""The streamed first stretch: a new station's first job played while it is generated.

When that stretch alone would put the station on the air (``resume_s`` at most its
length), nothing is stored yet and the program waits for that job, so its pieces
(:mod:`g4l.jobs.partials`) are played as they are generated (a
:class:`~g4l.hls.partial.PartialFeed`), under the chunk number it will be stored as; once
stored, the chunk counts as decoded and heard so far, so it is never played twice. Every
later job is queued whole: on the air, stored audio plays before it; off the air, the
program comes back only with ``resume_s`` stored (docs/hls.md "Streamed first stretch").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from g4l.hls.buffer import RATE
from g4l.hls.partial import PartialFeed, whole_output
from g4l.hls.station.accounting import Accounting, Piece
from g4l.hls.station.parts import StationParts
from g4l.hls.station.program import Program
from g4l.jobs.records import Job
from g4l.services.stations.policy import BufferPolicy
from g4l.store.stations import StationRecord

#: A streamed stretch whose job completed with pieces still being read waits this long for
#: them before the rest is queued from the stored chunk; one none of whose pieces came (run
#: on the stock engine, which does not stream) waits :data:`NO_PIECE_GRACE_S`.
STREAM_GRACE_S = 2.0
NO_PIECE_GRACE_S = 0.5


@dataclass
class Streamed:
    """The stretch being played while it is generated: job ``job_id``, to be stored as
    chunk ``seq``; ``feed`` is its first run's feed (:meth:`PartialFeed.latest` its
    current one); ``on_air``: its first audio is queued (the station went on the air)."""

    job_id: str
    seq: int
    feed: PartialFeed
    on_air: bool = False
    completed_at: float | None = None

    def started(self) -> list[PartialFeed]:
        """The feeds of its runs that queued audio, first run first."""
        feeds, feed = [], self.feed
        while True:
            if feed.started:
                feeds.append(feed)
            if feed.successor is None:
                return feeds
            feed = feed.successor


class FirstStretch:
    """A station's streamed first stretch, if it has one in progress.

    :param parts: the station's stores, stream and stored buffer (the settings say whether
        pieces are streamed at all).
    :param accounting: the pieces in memory.
    :param program: its program (the cursor goes past the stretch once it is stored).
    :param follow: how a job's streamed pieces reach a feed
        (:meth:`g4l.hls.packager.Packager.follow`); None: nothing is streamed.
    """

    def __init__(self, parts: StationParts, accounting: Accounting, program: Program,
                 follow: Callable[[str, PartialFeed], None] | None) -> None:
        self.settings = parts.ctx.settings
        self.station_id, self.stream, self.chunks = parts.station_id, parts.stream, parts.chunks
        self.store, self.log = parts.store, parts.log
        self.accounting, self.program, self.follow = accounting, program, follow
        self.current: Streamed | None = None

    @property
    def seq(self) -> int | None:
        """The chunk number of the stretch being streamed (None: none is)."""
        return self.current.seq if self.current is not None else None

    def is_of(self, job: Job) -> bool:
        return self.current is not None and self.current.job_id == job.id

    def waits(self, st: StationRecord, policy: BufferPolicy, new_s: float) -> bool:
        """Whether the next job's audio is what plays next with nothing before it: a new
        station's first stretch (nothing stored, never on the air) that would put it on the
        air by itself (``resume_s`` at most its ``new_s``: a long-profile station building
        hours before it goes on is not waiting for it). Later there is always stored audio
        before a job: on the air the buffer is above the emergency bound, and off the air
        the program waits for ``resume_s`` stored (the hysteresis holds)."""
        streaming = self.settings.stream_chunk_s > 0 and self.settings.max_batch > 1  # else no pieces
        return (streaming and self.follow is not None and not self.program.on_air and self.current is None
                and policy.resume_s <= new_s + 1e-6 and not st.ever_on_air and not st.last_blob
                and not self.chunks.entries(0, 0))

    def begin(self, job_id: str, seq: int, meta: dict[str, Any]) -> None:
        """Follow job ``job_id`` (before it is queued: its first piece finds the feed),
        to be stored as chunk ``seq``; ``meta`` tags its audio."""
        assert self.follow is not None
        feed = PartialFeed(self.stream, job_id, whole_output, meta)
        self.current = Streamed(job_id, seq, feed)
        self.follow(job_id, feed)

    def check_on_air(self) -> None:
        """The streamed stretch's first audio is queued: the station is on the air, and
        the play position follows the listeners through it."""
        streamed = self.current
        if streamed is not None and not streamed.on_air and streamed.started():
            self._on_air_now(streamed)

    def _on_air_now(self, streamed: Streamed) -> None:
        feed = streamed.started()[0]
        if feed.start_frame is None:
            return
        streamed.on_air = True
        self.accounting.pieces.append(Piece(streamed.seq, 0.0, 0.0, feed.start_frame))
        self.program.record_start(streamed.seq, feed.start_frame, streamed=True)
        self.store.update(self.station_id, on_air=True, ever_on_air=True, on_air_at=time.time(),
                          feed_started={"seq": streamed.seq, "offset_s": 0.0, "at": time.time(), "streamed": True})
        self.log.info("station on the air: first stretch streamed while it is generated", job_id=streamed.job_id,
                      chunk=streamed.seq)

    def settled(self, job: Job) -> bool:
        """Whether a completed job can be consumed: not streamed, or its feed has taken
        its last piece (or waited :data:`STREAM_GRACE_S` for it)."""
        streamed = self.current
        if streamed is None or streamed.job_id != job.id or streamed.feed.latest().finished:
            return True
        if streamed.completed_at is None:
            streamed.completed_at = time.monotonic()
        feed = streamed.feed.latest()
        grace = STREAM_GRACE_S if feed.started or feed.next_index else NO_PIECE_GRACE_S
        return time.monotonic() - streamed.completed_at > grace

    def ended(self, job: Job) -> None:
        """The streamed job failed or was cancelled: what was queued of it plays out, then
        the slate, and the play position goes back to before it (it is never stored)."""
        streamed = self.current
        if streamed is None or streamed.job_id != job.id:
            return
        self.current = None
        streamed.feed.latest().close()
        self.accounting.forget(streamed.seq)
        self.chunks.save_position(streamed.seq - 1, 0.0)
        if streamed.on_air:
            self.program.went_off_air()
        self.log.warning("streamed stretch ended without a result", job_id=job.id, status=job.status.value)

    def stored(self, entry: dict[str, Any], job: Job) -> None:
        """The streamed stretch is stored as chunk ``entry``: what its pieces did not
        queue comes from the stored audio, and the chunk counts as decoded (the cursor is
        past it), heard as far as the listeners are."""
        streamed = self.current
        self.current = None
        if streamed is None:
            return
        runs = streamed.started()
        seq, seconds = int(entry["seq"]), float(entry["seconds"])
        streamed.feed.latest().close()
        if not runs:
            self.chunks.save_position(seq, 0.0)
            return  # nothing was queued: the chunk plays from storage as any other
        feed = runs[-1]  # the last run that queued audio goes on from the stored chunk
        if not feed.finished:
            decoded = self.chunks.read(entry, 0.0, float(entry.get("lead_in_s") or 0.0) + seconds)
            self.log.warning("streamed pieces missing; the rest comes from the stored chunk", job_id=job.id)
            feed.rest_from(decoded.samples, decoded.sample_rate)
        if not streamed.on_air:
            self._on_air_now(streamed)
        for piece in self.accounting.pieces:
            if piece.seq == streamed.seq:
                piece.seq, piece.to_s = seq, seconds
        self.program.cursor = (seq, seconds)
        self.program.pieces_fed += 1
        self.log.info("streamed stretch stored", job_id=job.id, chunk=seq, seconds=round(seconds, 2),
                      queued_s=round(feed.queued_frames / RATE, 2))

    def close(self) -> None:
        """The station stopped: stop following the job."""
        if self.current is not None:
            self.current.feed.latest().close()
            self.current = None
