"""Drives one running station from the packager: each tick,

1. a finished generation becomes a chunk at the end of the station's stored buffer
   (:class:`~g4l.hls.station.chunks.ChunkQueue`: GridFS audio, Redis order and play position);
2. the play position is saved and chunks wholly heard leave the buffer
   (:mod:`~g4l.hls.station.accounting`);
3. the buffer's health sets the program on or off the air, and on the air the next pieces
   are decoded into the stream (:mod:`~g4l.hls.station.program`);
4. below HEALTHY the next chunk (:mod:`~g4l.hls.station.planner`) is queued at background
   priority (none while HEALTHY); a new station's first one may be played while it is
   generated (:mod:`~g4l.hls.station.streamed`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from g4l.context import Context
from g4l.hls.partial import PartialFeed
from g4l.hls.slate import slate_loop
from g4l.hls.station.accounting import Accounting
from g4l.hls.station.chunks import ChunkQueue
from g4l.hls.station.parts import StationParts
from g4l.hls.station.planner import chunk_entry, finished_stretch, plan
from g4l.hls.station.program import Program
from g4l.hls.station.streamed import FirstStretch
from g4l.hls.stream import LiveStream
from g4l.jobs.records import Job, JobStatus, new_job_id
from g4l.log import get_logger
from g4l.services.stations.history import StationHistory
from g4l.services.stations.policy import HEALTHY, BufferPolicy
from g4l.services.stations.service import StationService
from g4l.store.stations import StationRecord, StationStore

log = get_logger(__name__)

MAX_ERRORS_KEPT = 10


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
        self.store = StationStore(ctx.redis)
        self.stations = StationService(ctx)
        self.chunks = ChunkQueue(ctx, station_id)
        self.history = StationHistory(ctx)  # the dashboard's buffer plot
        self.log = log.bind(station_id=station_id, stream=stream.token[:8])
        parts = StationParts(ctx, station_id, stream, self.chunks, self.store, self.log)
        self.accounting = Accounting(parts)
        self.program = Program(parts, self.accounting, self._record_error)
        self.first = FirstStretch(parts, self.accounting, self.program, follow)
        self._lock = threading.Lock()
        self._backoff_until = 0.0
        self._failures = 0

    # ------------------------------------------------------------ resume
    def resume(self) -> None:
        """After a (re)start: the program goes on from the saved play position (the audio
        that was decoded in memory but unheard is decoded again from storage)."""
        with self._lock:
            st = self.store.get(self.station_id)
            if st is None or not st.running:
                return
            if not self.chunks.entries(0, 0) and st.last_blob and not st.chunk_seq:
                self._adopt_legacy(st)
            seq, offset = self.chunks.position()
            if st.on_air:
                self.program.cursor = (seq, offset)
            elif st.ever_on_air:
                self.stream.buffer.interrupt(slate_loop())
            self.log.info("station resumed", play_seq=seq, play_offset_s=round(offset, 2),
                          buffered_s=round(self.chunks.buffered_s(), 2), on_air=st.on_air)

    def _adopt_legacy(self, st: StationRecord) -> None:
        """A station from before stored buffers: its last stretch becomes its first chunk."""
        info = self.ctx.blobs.info(st.last_blob)
        if info is None:
            return
        entry = chunk_entry(st.last_blob, info.metadata, "continue", 0.0)
        self.chunks.push(entry, {"play_seq": 1, "play_offset_s": 0, "on_air": True})

    # ------------------------------------------------------------ tick
    def tick(self) -> None:
        """Consume a finished job, account for what was heard, set the program on or off
        the air, decode the next pieces, and queue the next chunk below HEALTHY."""
        with self._lock:
            st = self.store.get(self.station_id)
            if st is None or not st.running:
                return
            if st.job_id:
                job = self.ctx.jobs.get(st.job_id)
                if job is None:
                    self._clear_job(st.job_id)
                elif job.status is JobStatus.COMPLETED:
                    if self.first.settled(job):
                        self._consume(st, job)
                        self._failures = 0
                elif job.status.final:
                    self.first.ended(job)
                    if self._clear_job(st.job_id) and job.status is JobStatus.FAILED:
                        self._record_error(job.error or "generation failed", job.error_code or "")
                st = self.store.get(self.station_id) or st
            self.first.check_on_air()
            policy = BufferPolicy.loads(st.buffer_policy, self.settings)
            self.accounting.account(self.first.seq)
            buffered = self.chunks.buffered_s()
            state = policy.state(buffered)
            air = self.program.decide(st, policy, state, buffered)
            try:
                if self.program.on_air:
                    self.program.feed()
            finally:  # a change of air is written even when decoding failed
                self._publish(st, state, buffered, air)
            if state != HEALTHY and not st.job_id and time.monotonic() >= self._backoff_until:
                self._enqueue(st, policy)

    def _clear_job(self, job_id: str) -> bool:
        """Forget ``job_id`` unless another job replaced it meanwhile."""
        return self.store.update_if(self.station_id, {"job_id": job_id}, job_id="")

    def _record_error(self, message: str, code: str) -> None:
        self._failures += 1
        self._backoff_until = time.monotonic() + min(60.0, 2.0 ** self._failures)
        self.store.append(self.station_id, "errors", [{"at": time.time(), "message": message[:300], "code": code}],
                          MAX_ERRORS_KEPT)
        self.log.warning("station generation failed", error=message[:300], code=code, failures=self._failures)

    def _publish(self, st: StationRecord, state: str, buffered: float, air: dict[str, object]) -> None:
        """Write the buffer figures, with ``air`` (a change of air, if any) in the same update."""
        changes: dict[str, object] = {**air, "buffered_s": round(buffered, 3), "buffer_state": state}
        playing = self.stream.buffer.playing_meta() or {}
        seq, offset = self.chunks.position()
        if playing.get("chunk") == seq:
            changes["playing_audio_s"] = round(float(playing.get("audio_start_s") or 0) + offset, 3)
        if state != st.buffer_state:
            changes["buffer_state_since"] = time.time()
            self.log.info("station buffer state", state=state, was=st.buffer_state or None,
                          buffered_s=round(buffered, 2))
        self.store.update(self.station_id, **changes)
        self.history.record(self.station_id, buffered, state)  # the whole buffer: stored and in memory

    # ------------------------------------------------------------ generations
    def _enqueue(self, st: StationRecord, policy: BufferPolicy) -> None:
        stretch = plan(st, policy, self.settings)
        job_id = new_job_id()
        streamed = self.first.waits(st, policy, stretch.new_s - stretch.overhang_s)
        if streamed and self.first.follow is not None:
            seq = st.chunk_seq + 1  # what push() will number it
            self.first.begin(job_id, seq, {"prompt": stretch.prompt, "prompt_index": stretch.index, "job_id": job_id,
                                           "audio_start_s": round(stretch.audio_start_s, 3), "chunk": seq})
        job = self.stations.queue_stretch(self.station_id, st, index=stretch.index, prompt=stretch.prompt,
                                          audio_start_s=stretch.audio_start_s, new_seconds=stretch.new_s,
                                          fresh=stretch.fresh, overhang_s=stretch.overhang_s, job_id=job_id,
                                          streamed=streamed)
        self.log.info("station generation queued", job_id=job.id, prompt_index=stretch.index,
                      new_seconds=round(stretch.new_s, 2), audio_start_s=round(stretch.audio_start_s, 2),
                      fresh=stretch.fresh, buffered_s=round(self.chunks.buffered_s(), 2), streamed=streamed)

    def _consume(self, st: StationRecord, job: Job) -> None:
        """A finished chunk joins the stored buffer (its audio is already in GridFS)."""
        info = self.ctx.blobs.info(job.output_blob) if job.output_blob else None
        if info is None or not job.output_blob:
            self._clear_job(job.id)
            self._record_error("the generated audio was not found in storage", "INTERNAL")
            return
        entry, changes = finished_stretch(st, job, job.output_blob, info.metadata)
        # Update-if-current: only the tick that still finds this job consumes it (a notice
        # and a tick may race); the chunk is then stored with the record's changes.
        if not self.store.update_if(self.station_id, {"job_id": job.id}, job_id=""):
            return
        entry = self.chunks.push(entry, changes)
        if self.first.is_of(job):
            self.first.stored(entry, job)
        older = st.last_blob
        if older and older != job.output_blob and older not in self.chunks.blobs():
            self.ctx.blobs.delete(older)  # heard already, and no longer the next prompt
        seconds, wall = changes["rtf"][-1]
        self.log.info("station chunk stored", chunk=entry["seq"], seconds=round(seconds, 2),
                      prompt_index=entry["prompt_index"], realtime_factor=round(seconds / wall, 3),
                      buffered_s=round(self.chunks.buffered_s(), 2))

    # ------------------------------------------------------------ stop
    def discard(self) -> None:
        """The station was stopped: its stored chunks are deleted."""
        with self._lock:
            self.first.close()
            blobs = set(self.chunks.clear())
            last = self.store.fields(self.station_id, "last_blob")["last_blob"]
            for blob in blobs | ({last} if last else set()):
                self.ctx.blobs.delete(blob)
            self.store.update(self.station_id, last_blob="")
