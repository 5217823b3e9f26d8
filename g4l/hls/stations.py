"""Drives one running station from the packager: its stored buffer, its health, its program.

Each tick:

1. a finished generation becomes a chunk at the end of the station's stored buffer
   (:class:`~g4l.hls.chunks.ChunkQueue`: GridFS audio, Redis order and play position);
2. the play position is saved (the chunk playing and how much of it was heard); chunks
   wholly heard leave the queue and their audio is deleted;
3. the buffer's health (:mod:`g4l.services.stations.policy`) decides the program: DEPLETED
   takes it off the air (the queued audio fades out, the slate loops, nothing is lost: the
   unheard audio stays stored), and it comes back once ``resume_s`` is buffered;
4. on the air, at most ``G4L_STATION_MEMORY_S`` is decoded into the stream's memory, in
   pieces, seamlessly (pieces of one chunk are butted; chunks join by their lead-in, a
   silent break or a crossfade);
5. below HEALTHY the next chunk is queued at background priority (none while HEALTHY).

A new station's first stretch is streamed when it alone would put the station on the air
(``resume_s`` at most its length): nothing is stored and the program waits for that job,
so its pieces (:mod:`g4l.jobs.partials`) are played as they are generated (a
:class:`~g4l.hls.partial.PartialFeed`), under the chunk number it will be stored as; once
stored, the chunk counts as decoded and heard so far, so it is never played twice. Every
later job is queued whole: on the air, stored audio plays before it; off the air, the
program comes back only with ``resume_s`` stored (docs/hls.md "Streamed first stretch").

Prompts rotate on the station's own music timeline: chunk ``k`` covering ``[t, t + d)``
uses the prompt scheduled at ``t``, and a chunk is shortened to end on the next rotation
boundary (lengthened by the crossfade when the transition is one), so the prompt changes
on schedule.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from g4l import keys
from g4l.context import Context
from g4l.hls.buffer import CHANNELS, RATE
from g4l.hls.chunks import ChunkQueue
from g4l.hls.partial import PartialFeed, whole_output
from g4l.hls.slate import slate_loop
from g4l.hls.stream import LiveStream, to_stream_format
from g4l.jobs.records import Job, JobStatus, new_job_id
from g4l.log import get_logger
from g4l.services.stations.history import StationHistory
from g4l.services.stations.policy import DEPLETED, HEALTHY, BufferPolicy, Transition
from g4l.services.stations.service import StationService, prompt_for

log = get_logger(__name__)

#: The first stretch of a station with no chunk length is short: listeners hear music sooner.
FIRST_SECONDS = 8.0
#: Never generate less than this to reach a rotation boundary (rotate a little early instead).
MIN_NEW_SECONDS = 4.0
#: Audio is decoded into memory at most this much at a time.
PIECE_S = 10.0
MAX_ERRORS_KEPT = 10
MAX_ROTATIONS_KEPT = 50
#: Generation speed: the last few chunks' (audio seconds, wall seconds).
RTF_KEPT = 5
#: Chunk seqs heard lately, newest last (their order shows none was lost or repeated).
PLAYED_KEPT = 50
#: Where the last chunks start in the stream (``chunk_starts``), newest last.
STARTS_KEPT = 20
#: A streamed stretch whose job completed with pieces still being read waits this long for
#: them before the rest is queued from the stored chunk; one none of whose pieces came (run
#: on the stock engine, which does not stream) waits :data:`NO_PIECE_GRACE_S`.
STREAM_GRACE_S = 2.0
NO_PIECE_GRACE_S = 0.5


@dataclass
class Piece:
    """Audio of chunk ``seq`` from ``from_s`` to ``to_s`` (chunk seconds, lead-in not
    counted) decoded into the stream; ``from_s`` plays at stream frame ``frame``."""

    seq: int
    from_s: float
    to_s: float
    frame: int


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


class StationDriver:
    """Feeds the :class:`LiveStream` of station ``station_id``.

    :param ctx: stores and queue.
    :param station_id: the station.
    :param stream: its running stream.
    :param follow: how a job's streamed pieces reach a feed
        (:meth:`g4l.hls.packager.Packager.follow`); None: nothing is streamed.
    """

    def __init__(self, ctx: Context, station_id: str, stream: LiveStream,
                 follow: Callable[[str, PartialFeed], None] | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.station_id = station_id
        self.stream = stream
        self.key = keys.station(station_id)
        self.stations = StationService(ctx)
        self.chunks = ChunkQueue(ctx, station_id)
        self.history = StationHistory(ctx)  # the dashboard's buffer plot
        self.log = log.bind(station_id=station_id, stream=stream.token[:8])
        self._lock = threading.Lock()
        self._backoff_until = 0.0
        self._failures = 0
        #: What is decoded into the stream and not yet wholly heard, oldest first.
        self._pieces: deque[Piece] = deque()
        #: The next audio to decode: chunk seq and seconds into it (None: not on the air).
        self._cursor: tuple[int, float] | None = None
        self._last_fed_index: int | None = None
        self._pieces_fed = 0
        self._follow = follow
        self._streamed: Streamed | None = None

    # ------------------------------------------------------------ resume
    def resume(self) -> None:
        """After a (re)start: the program goes on from the saved play position (the audio
        that was decoded in memory but unheard is decoded again from storage)."""
        with self._lock:
            st = self.ctx.redis.hgetall(self.key)
            if st.get("status") != "running":
                return
            if not self.chunks.entries(0, 0) and st.get("last_blob") and not st.get("chunk_seq"):
                self._adopt_legacy(st)
            seq, offset = self.chunks.position()
            if st.get("on_air") == "1":
                self._cursor = (seq, offset)
            elif st.get("ever_on_air") == "1":
                self.stream.buffer.interrupt(slate_loop())
            self.log.info("station resumed", play_seq=seq, play_offset_s=round(offset, 2),
                          buffered_s=round(self.chunks.buffered_s(), 2), on_air=st.get("on_air") == "1")

    def _adopt_legacy(self, st: dict[str, str]) -> None:
        """A station from before stored buffers: its last stretch becomes its first chunk."""
        info = self.ctx.blobs.info(st["last_blob"])
        if info is None:
            return
        meta = info.metadata
        entry = self._entry(st["last_blob"], meta, "continue", 0.0)
        self.chunks.push(entry, {"play_seq": 1, "play_offset_s": 0, "on_air": "1"})

    # ------------------------------------------------------------ tick
    def tick(self) -> None:
        """Consume a finished job, account for what was heard, set the program on or off
        the air, decode the next pieces, and queue the next chunk below HEALTHY."""
        with self._lock:
            st = self.ctx.redis.hgetall(self.key)
            if st.get("status") != "running":
                return
            job_id = st.get("job_id") or ""
            if job_id:
                job = self.ctx.jobs.get(job_id)
                if job is None:
                    self._clear_job(job_id)
                elif job.status is JobStatus.COMPLETED:
                    if self._stream_settled(job):
                        self._consume(st, job)
                        self._failures = 0
                elif job.status.final:
                    self._stream_ended(job)
                    if self._clear_job(job_id) and job.status is JobStatus.FAILED:
                        self._record_error(st, job.error or "generation failed", job.error_code or "")
                st = self.ctx.redis.hgetall(self.key)
            if self._streamed is not None:
                self._stream_on_air()
            policy = BufferPolicy.loads(st.get("buffer_policy"), self.settings)
            self._account(st)
            buffered = self.chunks.buffered_s()
            state = policy.state(buffered)
            self._program(st, policy, state, buffered)
            if self._cursor is not None:
                self._feed(st)
            self._publish(st, state, buffered)
            if state != HEALTHY and not st.get("job_id") and time.monotonic() >= self._backoff_until:
                self._enqueue(st, policy)

    def _clear_job(self, job_id: str) -> bool:
        """Forget ``job_id`` unless another job replaced it meanwhile."""
        if self.ctx.redis.hget(self.key, "job_id") != job_id:
            return False
        self.ctx.redis.hset(self.key, "job_id", "")
        return True

    def _record_error(self, st: dict[str, str], message: str, code: str) -> None:
        self._failures += 1
        self._backoff_until = time.monotonic() + min(60.0, 2.0 ** self._failures)
        errors = json.loads(st.get("errors") or "[]")
        errors.append({"at": time.time(), "message": message[:300], "code": code})
        self.ctx.redis.hset(self.key, "errors", json.dumps(errors[-MAX_ERRORS_KEPT:]))
        self.log.warning("station generation failed", error=message[:300], code=code, failures=self._failures)

    # ------------------------------------------------------------ play position
    def _account(self, st: dict[str, str]) -> None:
        """Save where the listeners are; drop (and delete) chunks they have wholly heard."""
        position = self.stream.buffer.position
        while self._pieces:
            piece = self._pieces[0]
            if self._streamed is not None and piece.seq == self._streamed.seq:
                # Still being generated (not stored yet): only where the listeners are.
                if position >= piece.frame:
                    self.chunks.save_position(piece.seq, (position - piece.frame) / RATE)
                break
            end = piece.frame + int(round((piece.to_s - piece.from_s) * RATE))
            later = self._pieces[1] if len(self._pieces) > 1 else None
            if position < end:
                if position >= piece.frame:
                    self.chunks.save_position(piece.seq, piece.from_s + (position - piece.frame) / RATE)
                break
            self._pieces.popleft()
            if later is None or later.seq != piece.seq:
                self._played(st, piece.seq)  # its last piece is heard
            elif position < later.frame:
                self.chunks.save_position(piece.seq, piece.to_s)

    def _played(self, st: dict[str, str], seq: int) -> None:
        entry = self.chunks.pop_played(seq)
        if entry is None:
            return
        played = [*json.loads(self.ctx.redis.hget(self.key, "played") or "[]"), seq][-PLAYED_KEPT:]
        self.ctx.redis.hset(self.key, "played", json.dumps(played))
        if entry["blob"] != self.ctx.redis.hget(self.key, "last_blob"):
            self.ctx.blobs.delete(entry["blob"])  # the newest chunk is the next one's prompt: kept

    # ------------------------------------------------------------ program
    def _program(self, st: dict[str, str], policy: BufferPolicy, state: str, buffered: float) -> None:
        """On the air unless DEPLETED; back on once ``resume_s`` is buffered (hysteresis)."""
        on_air = self._cursor is not None
        if on_air and state == DEPLETED:
            dropped = self.stream.buffer.interrupt(slate_loop())
            self._pieces.clear()
            self._cursor = None
            self.ctx.redis.hset(self.key, mapping={"on_air": "0", "off_air_at": time.time()})
            seq, offset = self.chunks.position()
            self.log.warning("station off the air: buffer depleted", buffered_s=round(buffered, 2),
                             emergency_s=policy.emergency_s, resume_s=policy.resume_s, play_seq=seq,
                             play_offset_s=round(offset, 2), unheard_s=round(dropped / RATE, 2))
        elif not on_air and buffered >= policy.resume_s:
            self.stream.buffer.resume()
            self._cursor = self.chunks.position()
            self._last_fed_index = None
            self.ctx.redis.hset(self.key, mapping={"on_air": "1", "ever_on_air": "1", "on_air_at": time.time()})
            self.log.info("station on the air", buffered_s=round(buffered, 2), resume_s=policy.resume_s,
                          resumed=st.get("ever_on_air") == "1")

    def _feed(self, st: dict[str, str]) -> None:
        """Decode stored audio into the stream until ``G4L_STATION_MEMORY_S`` is ahead."""
        while self._cursor is not None and self.stream.buffer.buffered_seconds < self.settings.station_memory_s:
            seq, offset = self._cursor
            entry = self.chunks.find(seq)
            if entry is None:
                head = self.chunks.entries(0, 0)
                if head and int(head[0]["seq"]) > seq:  # that chunk is gone: go on with the next one
                    self._cursor = (int(head[0]["seq"]), 0.0)
                    continue
                return  # nothing more stored yet
            seconds = float(entry["seconds"])
            if offset >= seconds - 1e-3:
                self._cursor = (seq + 1, 0.0)
                continue
            try:
                self._feed_piece(st, entry, offset, min(PIECE_S, seconds - offset))
            except KeyError:
                self._record_error(st, "a stored chunk of the buffer was not found", "INTERNAL")
                self._cursor = (seq + 1, 0.0)

    def _feed_piece(self, st: dict[str, str], entry: dict[str, Any], offset: float, seconds: float) -> None:
        buffer = self.stream.buffer
        lead = float(entry.get("lead_in_s") or 0.0)
        join, join_s = entry.get("join") or "continue", float(entry.get("join_s") or 0.0)
        first = offset <= 1e-6
        if first and join == "continue" and lead:
            decoded = self.chunks.read(entry, 0.0, lead + seconds)  # the lead-in crossfades over the last chunk
        else:
            decoded = self.chunks.read(entry, lead + offset, seconds)
        x = to_stream_format(decoded.samples, decoded.sample_rate)
        tags = {"prompt": entry.get("prompt") or "", "prompt_index": int(entry.get("prompt_index") or 0),
                "job_id": entry.get("job_id"), "audio_start_s": float(entry.get("audio_start_s") or 0),
                "chunk": int(entry["seq"])}
        # A break or crossfade is made against the previous chunk still in memory.
        continuing = bool(self._pieces) and self._pieces[-1].seq == int(entry["seq"]) - 1
        if not first:
            frame = buffer.append(x, meta=tags, join="butt")
        elif join == "break" and continuing:
            buffer.append(np.zeros((CHANNELS, int(round(join_s * RATE))), np.float32), join="fade")
            frame = buffer.append(x, meta=tags, join="fade")
        elif join == "crossfade" and continuing:
            frame = buffer.append(x, overlap_frames=int(round(join_s * RATE)), meta=tags)
        else:
            buffer.append(x, overlap_frames=int(round(lead * RATE)) if first else 0, meta=tags)
            frame = buffer.last_new_frame
        self.stream.last_audio = time.time()
        self._pieces.append(Piece(int(entry["seq"]), offset, offset + seconds, frame))
        if first:
            self._record_start(int(entry["seq"]), frame, streamed=False)
        if not self._pieces_fed:  # where this packager's program starts (after a restart: the saved position)
            self.ctx.redis.hset(self.key, "feed_started", json.dumps({"seq": int(entry["seq"]), "offset_s": offset,
                                                                      "at": time.time()}))
            self.log.info("station program from storage", chunk=int(entry["seq"]), offset_s=round(offset, 3))
        self._pieces_fed += 1
        self._cursor = (int(entry["seq"]), offset + seconds)
        index = int(entry.get("prompt_index") or 0)
        if first and entry.get("rotated"):
            self._record_rotation(st, entry, frame)
        self._last_fed_index = index

    def _record_start(self, seq: int, frame: int, *, streamed: bool) -> None:
        """Note where chunk ``seq``'s first new frame plays in the stream (``stream_s``:
        seconds of the stream's audio, as its segments count them): the program's joins,
        for the dashboard and for checking that nothing plays twice or leaves a gap."""
        starts = json.loads(self.ctx.redis.hget(self.key, "chunk_starts") or "[]")
        starts.append({"seq": seq, "stream_s": round((frame + self.stream.encoder.prefill_frames) / RATE, 4),
                       "streamed": streamed})
        self.ctx.redis.hset(self.key, "chunk_starts", json.dumps(starts[-STARTS_KEPT:]))

    def _record_rotation(self, st: dict[str, str], entry: dict[str, Any], frame: int) -> None:
        """Note when the listeners hear the new prompt (``plays_at``: wall clock)."""
        buffer = self.stream.buffer
        rotations = json.loads(self.ctx.redis.hget(self.key, "rotations") or "[]")
        rotations.append({"index": int(entry.get("prompt_index") or 0), "prompt": entry.get("prompt") or "",
                          "scheduled_audio_s": entry.get("scheduled_audio_s"),
                          "audio_s": entry.get("audio_start_s"), "chunk": entry["seq"],
                          "transition": entry.get("join"), "transition_s": entry.get("join_s") or 0.0,
                          "stream_s": round((frame + self.stream.encoder.prefill_frames) / RATE, 3),
                          "plays_at": round(time.time() + (frame - buffer.position) / RATE, 3)})
        self.ctx.redis.hset(self.key, "rotations", json.dumps(rotations[-MAX_ROTATIONS_KEPT:]))
        self.log.info("station prompt rotated", prompt_index=entry.get("prompt_index"),
                      scheduled_audio_s=entry.get("scheduled_audio_s"), transition=entry.get("join"))

    def _publish(self, st: dict[str, str], state: str, buffered: float) -> None:
        fields: dict[str, Any] = {"buffered_s": round(buffered, 3), "buffer_state": state}
        playing = self.stream.buffer.playing_meta() or {}
        seq, offset = self.chunks.position()
        if playing.get("chunk") == seq:
            fields["playing_audio_s"] = round(float(playing.get("audio_start_s") or 0) + offset, 3)
        if state != st.get("buffer_state"):
            fields["buffer_state_since"] = time.time()
            self.log.info("station buffer state", state=state, was=st.get("buffer_state") or None,
                          buffered_s=round(buffered, 2))
        self.ctx.redis.hset(self.key, mapping=fields)
        self.history.record(self.station_id, buffered, state)  # the whole buffer: stored and in memory

    # ------------------------------------------------------------ generations
    def _plan(self, st: dict[str, str], policy: BufferPolicy) -> tuple[int, str, float, float, float, bool]:
        """(prompt index, prompt, start on the music timeline, seconds to generate, of them
        seconds past the rotation boundary (a crossfade's overlap), whether it starts the
        prompt afresh)."""
        audio_s = float(st.get("audio_s") or 0)
        prompts = json.loads(st.get("prompts") or "[]")
        rotate = float(st.get("rotate_every_s") or 0)
        transition = Transition.loads(st.get("transition"))
        if policy.chunk_s:
            longest = policy.chunk_s
        elif st.get("last_blob"):
            longest = self.settings.output_seconds - self.settings.station_prompt_seconds
        else:
            longest = min(FIRST_SECONDS, self.settings.output_seconds)
        index, prompt = prompt_for(prompts, rotate, audio_s)
        new_s, overhang = longest, 0.0
        if rotate > 0 and len(prompts) > 1:
            boundary = (math.floor(audio_s / rotate + 1e-9) + 1) * rotate
            remaining = boundary - audio_s
            if remaining < MIN_NEW_SECONDS:  # rotate a little early rather than a stub
                index, prompt = prompt_for(prompts, rotate, boundary)
                remaining += rotate
            new_s = min(longest, remaining)
            if transition.kind == "crossfade" and new_s >= remaining - 1e-6:
                overhang = transition.seconds  # the old prompt plays on under the fade
        last = st.get("last_prompt_index")
        fresh = (not st.get("last_blob")) or (transition.kind != "continue" and last not in (None, "", str(index)))
        return index, prompt, audio_s, max(MIN_NEW_SECONDS, new_s) + overhang, overhang, fresh

    def _enqueue(self, st: dict[str, str], policy: BufferPolicy) -> None:
        index, prompt, audio_s, new_s, overhang, fresh = self._plan(st, policy)
        job_id, streamed = new_job_id(), self._program_waits(st, policy, new_s - overhang)
        if streamed and self._follow is not None:
            seq = int(st.get("chunk_seq") or 0) + 1  # what push() will number it
            feed = PartialFeed(self.stream, job_id, whole_output,
                               {"prompt": prompt, "prompt_index": index, "job_id": job_id,
                                "audio_start_s": round(audio_s, 3), "chunk": seq})
            self._streamed = Streamed(job_id, seq, feed)
            self._follow(job_id, feed)  # before the job can start: its first piece finds the feed
        job = self.stations.queue_stretch(self.station_id, st, index=index, prompt=prompt, audio_start_s=audio_s,
                                          new_seconds=new_s, fresh=fresh, overhang_s=overhang, job_id=job_id,
                                          streamed=streamed)
        self.log.info("station generation queued", job_id=job.id, prompt_index=index, new_seconds=round(new_s, 2),
                      audio_start_s=round(audio_s, 2), fresh=fresh, buffered_s=round(self.chunks.buffered_s(), 2),
                      streamed=streamed)

    def _program_waits(self, st: dict[str, str], policy: BufferPolicy, new_s: float) -> bool:
        """Whether the next job's audio is what plays next with nothing before it: a new
        station's first stretch (nothing stored, never on the air) that would put it on the
        air by itself (``resume_s`` at most its ``new_s``: a long-profile station building
        hours before it goes on is not waiting for it). Later there is always stored audio
        before a job: on the air the buffer is above the emergency bound, and off the air
        the program waits for ``resume_s`` stored (the hysteresis holds)."""
        streaming = self.settings.stream_chunk_s > 0 and self.settings.max_batch > 1  # else no pieces
        return (streaming and self._follow is not None and self._cursor is None and self._streamed is None
                and policy.resume_s <= new_s + 1e-6 and st.get("ever_on_air") != "1" and not st.get("last_blob")
                and not self.chunks.entries(0, 0))

    # ------------------------------------------------------------ streamed stretch
    def _stream_on_air(self) -> None:
        """The streamed stretch's first audio is queued: the station is on the air, and
        the play position follows the listeners through it."""
        streamed = self._streamed
        if streamed is not None and not streamed.on_air and streamed.started():
            self._stream_on_air_now(streamed)

    def _stream_on_air_now(self, streamed: Streamed) -> None:
        feed = streamed.started()[0]
        if feed.start_frame is None:
            return
        streamed.on_air = True
        self._pieces.append(Piece(streamed.seq, 0.0, 0.0, feed.start_frame))
        self._record_start(streamed.seq, feed.start_frame, streamed=True)
        self.ctx.redis.hset(self.key, mapping={
            "on_air": "1", "ever_on_air": "1", "on_air_at": time.time(),
            "feed_started": json.dumps({"seq": streamed.seq, "offset_s": 0.0, "at": time.time(), "streamed": True})})
        self.log.info("station on the air: first stretch streamed while it is generated", job_id=streamed.job_id,
                      chunk=streamed.seq)

    def _stream_settled(self, job: Job) -> bool:
        """Whether a completed job can be consumed: not streamed, or its feed has taken
        its last piece (or waited :data:`STREAM_GRACE_S` for it)."""
        streamed = self._streamed
        if streamed is None or streamed.job_id != job.id or streamed.feed.latest().finished:
            return True
        if streamed.completed_at is None:
            streamed.completed_at = time.monotonic()
        feed = streamed.feed.latest()
        grace = STREAM_GRACE_S if feed.started or feed.next_index else NO_PIECE_GRACE_S
        return time.monotonic() - streamed.completed_at > grace

    def _stream_ended(self, job: Job) -> None:
        """The streamed job failed or was cancelled: what was queued of it plays out, then
        the slate, and the play position goes back to before it (it is never stored)."""
        streamed = self._streamed
        if streamed is None or streamed.job_id != job.id:
            return
        self._streamed = None
        streamed.feed.latest().close()
        self._pieces = deque(p for p in self._pieces if p.seq != streamed.seq)
        self.chunks.save_position(streamed.seq - 1, 0.0)
        if streamed.on_air:
            self.stream.buffer.interrupt(slate_loop())
            self.ctx.redis.hset(self.key, mapping={"on_air": "0", "off_air_at": time.time()})
        self.log.warning("streamed stretch ended without a result", job_id=job.id, status=job.status.value)

    def _stream_stored(self, entry: dict[str, Any], job: Job) -> None:
        """The streamed stretch is stored as chunk ``entry``: what its pieces did not
        queue comes from the stored audio, and the chunk counts as decoded (the cursor is
        past it), heard as far as the listeners are."""
        streamed = self._streamed
        self._streamed = None
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
            self._stream_on_air_now(streamed)
        for piece in self._pieces:
            if piece.seq == streamed.seq:
                piece.seq, piece.to_s = seq, seconds
        self._cursor = (seq, seconds)
        self._pieces_fed += 1
        self.log.info("streamed stretch stored", job_id=job.id, chunk=seq, seconds=round(seconds, 2),
                      queued_s=round(feed.queued_frames / RATE, 2))

    @staticmethod
    def _entry(blob: str, meta: dict[str, Any], join: str, join_s: float) -> dict[str, Any]:
        return {"blob": blob, "seconds": round(float(meta.get("duration") or 0), 4),
                "lead_in_s": float(meta.get("lead_in_s") or 0.0), "prompt": meta.get("prompt") or "",
                "prompt_index": int(meta.get("prompt_index") or 0), "job_id": meta.get("job_id"),
                "audio_start_s": float(meta.get("audio_start_s") or 0), "join": join, "join_s": join_s}

    def _consume(self, st: dict[str, str], job: Job) -> None:
        """A finished chunk joins the stored buffer (its audio is already in GridFS)."""
        info = self.ctx.blobs.info(job.output_blob) if job.output_blob else None
        if info is None or not job.output_blob:
            self._clear_job(job.id)
            self._record_error(st, "the generated audio was not found in storage", "INTERNAL")
            return
        meta = info.metadata
        generations = int(st.get("generations") or 0)
        index = int(meta.get("prompt_index") or 0)
        rotated = bool(generations) and str(index) != (st.get("last_prompt_index") or "")
        transition = Transition.loads(st.get("transition"))
        join, join_s = (transition.kind, transition.seconds) if rotated else ("continue", 0.0)
        entry = self._entry(job.output_blob, meta, join, join_s)
        audio_start = float(meta.get("audio_start_s") or 0)
        overhang = float(meta.get("overhang_s") or 0.0)
        if rotated:
            rotate = float(st.get("rotate_every_s") or 0)
            scheduled = round(audio_start / rotate) * rotate if rotate else audio_start
            entry.update(rotated=True, scheduled_audio_s=scheduled)
        seconds = float(meta.get("duration") or 0)
        wall = max(1e-3, (job.finished or time.time()) - (job.started or job.created))
        speed = [*json.loads(st.get("rtf") or "[]"), [round(seconds, 3), round(wall, 3)]][-RTF_KEPT:]
        fields: dict[str, Any] = {
            "job_id": "", "last_blob": job.output_blob,
            "audio_s": round(audio_start + seconds - overhang, 3), "generations": generations + 1,
            "last_prompt_index": index, "last_generated_at": job.finished or time.time(), "rtf": json.dumps(speed),
        }
        if self.ctx.redis.hget(self.key, "job_id") != job.id:
            return  # consumed meanwhile (a notice and a tick raced)
        entry = self.chunks.push(entry, fields)
        if self._streamed is not None and self._streamed.job_id == job.id:
            self._stream_stored(entry, job)
        older = st.get("last_blob") or ""
        if older and older != job.output_blob and older not in self.chunks.blobs():
            self.ctx.blobs.delete(older)  # heard already, and no longer the next prompt
        self.log.info("station chunk stored", chunk=entry["seq"], seconds=round(seconds, 2), prompt_index=index,
                      realtime_factor=round(seconds / wall, 3), buffered_s=round(self.chunks.buffered_s(), 2))

    # ------------------------------------------------------------ stop
    def discard(self) -> None:
        """The station was stopped: its stored chunks are deleted."""
        with self._lock:
            if self._streamed is not None:
                self._streamed.feed.latest().close()
                self._streamed = None
            blobs = set(self.chunks.clear())
            last = self.ctx.redis.hget(self.key, "last_blob") or ""
            for blob in blobs | ({last} if last else set()):
                self.ctx.blobs.delete(blob)
            self.ctx.redis.hset(self.key, "last_blob", "")
