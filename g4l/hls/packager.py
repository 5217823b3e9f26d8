"""The packager process's core: which streams run here, and what audio they get.

- Every stream listed in :data:`g4l.keys.STREAMS` is run by exactly one packager process:
  the first to take its lease (a Redis key with a TTL, refreshed every tick). A packager
  that dies loses its leases and another one (or its restarted self) takes the streams
  over, continuing their playlists after an ``EXT-X-DISCONTINUITY``.
- New audio arrives by the ``g4l:notices`` channel: a COMPLETED notice of a session that
  has a listen stream appends that generation's new audio; a station's notice wakes its
  :class:`StationDriver`; a one-shot stream (the realtime API) gets its job's audio
  once. Audio is read through :mod:`g4l.jobs.delivery` (the short-lived
  Redis hand-off, or GridFS), never from the notice itself.
- Streamed generation: a running job's ``partial`` notices (:mod:`g4l.jobs.partials`)
  feed its session's or one-shot's stream piece by piece (:class:`~g4l.hls.partial.PartialFeed`);
  its completion then appends nothing more (or, were a piece lost, only the rest).
- Each tick publishes every stream's status (buffered seconds, health, prompt playing)
  into its Redis hash and stops streams that were stopped or idled out.

All of it runs in plain OS threads (this process does not use gevent).

Why one file of over 400 lines: the leases, the notice dispatch and the tick share the
packager's table of running streams and its lock; what a stream does with its audio already
lives in its own module (:mod:`g4l.hls.partial`, :mod:`g4l.hls.station`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from g4l import audio, keys
from g4l.context import Context
from g4l.hls.buffer import RATE
from g4l.hls.outputs import StationOutputs
from g4l.hls.partial import PartialFeed, after_prompt, whole_output
from g4l.hls.recorder import RECOVER_EVERY_S, StationRecorder, recover_leftovers
from g4l.hls.station import StationDriver
from g4l.hls.stream import LiveStream
from g4l.jobs import delivery, kinds, notices, partials
from g4l.jobs.kinds import Stream
from g4l.jobs.records import JobStatus
from g4l.jobs.spec import Assembly
from g4l.log import get_logger
from g4l.services import idle_streams
from g4l.services.listen import ONESHOT, SESSION, STATION, ListenService, buffer_health

log = get_logger(__name__)

TICK_S = 0.5
LEASE_S = 10
CLEANUP_EVERY_S = 10.0
#: How long to wait for a session result to show up in storage.
RESULT_WAIT_S = 30.0
#: A streamed job that completed with pieces still missing this long gets the rest from its result.
FEED_GRACE_S = 3.0
#: A feed that heard nothing this long is dropped (its job's end notice was missed).
FEED_STALE_S = 600.0


#: Set the lease to this packager's name unless another name holds it (one atomic step:
#: a lease that expires between a read and a write must not be extended for someone else).
_TAKE_LEASE = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

#: Publish a stream's state unless it was stopped meanwhile: a stop (``ListenService.stop``)
#: can land between this packager's tick and its write, and a plain HSET would bring the
#: stopped stream back to life (its playlist served again until the next tick closes it).
_PUBLISH = """
if redis.call('HGET', KEYS[1], 'state') == 'stopped' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


class Packager:
    """Runs this process's share of the live streams until :meth:`stop`."""

    def __init__(self, ctx: Context, name: str | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.listen = ListenService(ctx)
        self._take_lease_script = ctx.redis.register_script(_TAKE_LEASE)
        self._publish_script = ctx.redis.register_script(_PUBLISH)
        self.streams: dict[str, LiveStream] = {}
        self.drivers: dict[str, StationDriver] = {}
        self.outputs: dict[str, StationOutputs] = {}
        self.recorders: dict[str, StationRecorder] = {}
        #: Job id -> the feed playing its streamed pieces (:meth:`follow`).
        self.feeds: dict[str, PartialFeed] = {}
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hls-audio")
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._last_cleanup = 0.0
        self._recovering: threading.Thread | None = None
        self._last_recover: float | None = None  # None: not yet (it runs on the first tick)

    # ------------------------------------------------------------ life cycle
    def run(self) -> None:
        """Tick until :meth:`stop`; then stop every stream, keeping its files for a successor."""
        self.settings.hls_path.mkdir(parents=True, exist_ok=True)
        threading.Thread(target=self._notice_loop, name="hls-notices", daemon=True).start()
        log.info("packager running", packager=self.name, directory=str(self.settings.hls_path))
        while not self._stop.is_set():
            try:
                self.tick()
            except redis.RedisError as exc:
                log.warning("packager tick failed (redis)", error=str(exc)[:200])
            except Exception:
                log.exception("packager tick failed")
            self._stop.wait(TICK_S)
        with self._lock:
            for token in list(self.streams):
                self._close(token, delete=False)
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("packager stopped", packager=self.name)

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------ tick
    def tick(self) -> None:
        """Take over unowned streams, drop stopped ones, drive stations, publish status."""
        r = self.ctx.redis
        wanted = set(r.smembers(keys.STREAMS))
        with self._lock:
            for token in sorted(wanted - set(self.streams)):
                self._try_open(token)
            for token in list(self.streams):
                if token not in wanted:
                    self._close(token, delete=True)
                elif r.get(keys.stream_owner(token)) != self.name:
                    log.warning("stream lease lost", stream=token[:8])
                    self._close(token, delete=False)
                else:
                    r.expire(keys.stream_owner(token), LEASE_S)
            streams = list(self.streams.items())
        for token, stream in streams:
            driver = self.drivers.get(token)
            if driver is not None:
                try:
                    driver.tick()
                except redis.RedisError:
                    raise
                except Exception:
                    log.exception("station tick failed", station_id=stream.ref)
            recorder = self.recorders.get(token)
            if recorder is not None:
                recorder.tick()
            outputs = self.outputs.get(token)
            if outputs is not None:
                try:
                    outputs.sync()
                except redis.RedisError:
                    raise
                except Exception:
                    log.exception("station outputs tick failed", station_id=stream.ref)
            self._publish(token, stream)
        self._tend_feeds()
        self._recover_recordings()
        if time.monotonic() - self._last_cleanup > CLEANUP_EVERY_S:
            self._last_cleanup = time.monotonic()
            idle_streams.stop_idle(self.ctx)

    def _recover_recordings(self) -> None:
        """At start, then every ``RECOVER_EVERY_S``: store the recording files a killed
        packager (or its ffmpeg) left behind (:func:`g4l.hls.recorder.recover_leftovers`), on
        a thread of its own (a remux takes seconds; the tick must not wait)."""
        if self._recovering is not None and self._recovering.is_alive():
            return
        if self._last_recover is not None and time.monotonic() - self._last_recover < RECOVER_EVERY_S:
            return
        self._last_recover = time.monotonic()
        self._recovering = threading.Thread(target=self._guard, name="rec-recover", daemon=True, args=(
            recover_leftovers, self.ctx, self.settings.hls_path / ".recordings"))
        self._recovering.start()

    def _take_lease(self, token: str) -> bool:
        """Take ``token``'s lease if it is free or already ours: a packager restarted under its
        predecessor's name (the launcher's ``G4L_PACKAGER_NAME``) takes that one's streams at
        once, where another name waits out the ``LEASE_S`` TTL (listeners hear a stall)."""
        return bool(self._take_lease_script(keys=[keys.stream_owner(token)], args=[self.name, LEASE_S]))

    def _try_open(self, token: str) -> None:
        r = self.ctx.redis
        info = r.hgetall(keys.listen(token))
        if not info or info.get("state") == "stopped":
            r.srem(keys.STREAMS, token)
            return
        if not self._take_lease(token):
            return  # another packager runs it
        kind, ref = info.get("kind", ""), info.get("ref", "")
        stream = LiveStream(token, kind, ref, self.settings)
        stream.start()
        self.streams[token] = stream
        if kind == STATION:
            driver = StationDriver(self.ctx, ref, stream, follow=self.follow)
            self.drivers[token] = driver
            self.outputs[token] = StationOutputs(self.ctx, ref, stream)
            if r.hget(keys.station(ref), "record") == "1":
                self.recorders[token] = StationRecorder(self.ctx, ref, stream)
                self.recorders[token].start()
            self.pool.submit(self._guard, driver.resume)
        elif kind == SESSION:
            self.pool.submit(self._guard, self._preroll, stream)
        elif kind == ONESHOT:
            self.pool.submit(self._guard, self._append_oneshot, stream)

    def _close(self, token: str, *, delete: bool) -> None:
        stream = self.streams.pop(token, None)
        driver = self.drivers.pop(token, None)
        if driver is not None and delete:
            self.pool.submit(self._guard, driver.discard)  # a stopped station's stored buffer goes
        outputs = self.outputs.pop(token, None)
        if outputs is not None:
            outputs.close()
        recorder = self.recorders.pop(token, None)
        if recorder is not None:
            recorder.close(stopped=delete)
        if stream is not None:
            stream.stop(delete=delete)
        owner = keys.stream_owner(token)
        if self.ctx.redis.get(owner) == self.name:
            self.ctx.redis.delete(owner)

    def _publish(self, token: str, stream: LiveStream) -> None:
        snap = stream.snapshot()
        low = self.settings.station_low_buffer_s if stream.kind == STATION else 1.0
        started = stream.last_audio > 0
        snap["buffer_health"] = buffer_health(stream.buffer.buffered_seconds, low, started)
        if not started:
            snap["state"] = "starting" if stream.segments == 0 else "waiting"
        fields = {k: v for k, v in snap.items() if k != "last_audio" or v}
        fields.update(packager=self.name, updated=time.time())
        pairs = [x for k, v in fields.items() for x in (k, v)]
        self._publish_script(keys=[keys.listen(token)], args=[self.settings.retention_seconds, *pairs])

    # ------------------------------------------------------------ notices
    def _notice_loop(self) -> None:
        notices.listen(self.ctx.redis, self.on_notice, self._stop.is_set)

    def on_notice(self, notice: dict[str, Any]) -> None:
        """React to a job's end: a station's driver consumes it; a session with a running
        stream gets that generation's new audio. A streamed job's pieces go to its feed."""
        if notice.get("type") == notices.PARTIAL:
            self._on_partial(partials.Piece.of(notice), str(notice.get("kind") or ""))
            return
        if notice.get("type") not in notices.FINAL:
            return
        feed = self.feeds.get(notice.get("job_id") or "")
        if feed is not None:
            self._feed_ended(feed, notice)
        if notice.get("type") == notices.COMPLETED and feed is None:
            for shot in [s for s in list(self.streams.values()) if s.kind == ONESHOT]:
                if shot.ref == notice.get("job_id"):
                    self.pool.submit(self._guard, self._append_oneshot, shot)
        ref = notice.get("session_id") or ""
        drivers = [d for d in list(self.drivers.values()) if d.station_id == ref]
        for driver in drivers:
            self.pool.submit(self._guard, driver.tick)
        if drivers or not ref or notice.get("type") != notices.COMPLETED or feed is not None:
            return
        token = self.ctx.redis.hget(keys.session(ref), "listen_token") or ""
        stream = self.streams.get(token)
        if stream is not None:
            self.pool.submit(self._guard, self._append_session_result, stream, notice)

    # ------------------------------------------------------------ streamed generation
    def follow(self, job_id: str, feed: PartialFeed) -> None:
        """Play ``job_id``'s streamed pieces through ``feed`` (a station driver's way in;
        session and one-shot streams are followed on their job's first piece)."""
        with self._lock:
            self.feeds[job_id] = feed

    def _on_partial(self, piece: partials.Piece, kind: str) -> None:
        feed = self.feeds.get(piece.job_id)
        if feed is not None and piece.index == 0 and feed.next_index > 0 and feed.stream.kind == STATION:
            # A station's stretch runs again (it gave way, or its worker died): the new
            # run's audio goes on where the first run's stopped (the driver keeps the chain).
            successor = feed.follow_on()
            with self._lock:
                self.feeds[piece.job_id] = successor
            feed = successor
        elif feed is not None and piece.index == 0 and feed.next_index > 0:
            # The job runs again (its worker died, or a session's job gave way): its first
            # run's audio stays as queued, the new run starts like a new generation.
            feed.close()
            with self._lock:
                self.feeds.pop(piece.job_id, None)
            if feed.stream.kind == ONESHOT:
                feed.stream.played_jobs.discard(piece.job_id)
            feed = None
        if feed is None and piece.index == 0:
            feed = self._new_feed(piece, kind)
        if feed is not None:
            self.pool.submit(self._guard, self._read_piece, feed, piece)

    def _new_feed(self, piece: partials.Piece, kind: str) -> PartialFeed | None:
        """The feed of a session's or one-shot's job on its first piece, if this process
        runs the stream it plays on."""
        with self._lock:
            plays_on = kinds.stream_of(kind)
            if plays_on is Stream.ONESHOT:
                token = self.ctx.redis.hget(keys.oneshot(piece.job_id), "token") or ""
                if token and token not in self.streams:
                    self._try_open(token)  # registered a moment ago: the first piece is here already
                shots = [s for s in self.streams.values() if s.kind == ONESHOT and s.ref == piece.job_id]
                if not shots or piece.job_id in shots[0].played_jobs:
                    return None
                job = self.ctx.jobs.get(piece.job_id)
                shots[0].played_jobs.add(piece.job_id)  # its completion appends nothing more
                feed = PartialFeed(shots[0], piece.job_id, whole_output,
                                   {"job_id": piece.job_id, "kind": kind,
                                    "prompt": (job.spec.description if job else "") or ""})
            elif plays_on is Stream.LISTEN and piece.session_id:
                token = self.ctx.redis.hget(keys.session(piece.session_id), "listen_token") or ""
                stream = self.streams.get(token)
                job = self.ctx.jobs.get(piece.job_id)
                if stream is None or stream.kind != SESSION or job is None:
                    return None
                begin = after_prompt if job.spec.assembly is Assembly.SPLICE else whole_output
                feed = PartialFeed(stream, piece.job_id, begin, {"job_id": piece.job_id, "kind": kind})
            else:
                return None
            self.feeds[piece.job_id] = feed
        feed.stream.log.info("generation streamed while it is generated", job_id=piece.job_id, generation=kind)
        return feed

    def _read_piece(self, feed: PartialFeed, piece: partials.Piece) -> None:
        samples = partials.read(self.ctx.redis_bytes, piece)
        if samples is not None:  # expired: the rest comes from the result
            feed.offer(piece, samples)

    def _feed_ended(self, feed: PartialFeed, notice: dict[str, Any]) -> None:
        """A streamed job ended: done if every piece is queued; a failed or cancelled one
        keeps what was queued; a completed one missing pieces gets the rest later."""
        if notice.get("type") != notices.COMPLETED:
            feed.close()
        # A station's driver finishes its own feeds (it appends its results itself).
        if feed.done.is_set() or notice.get("type") != notices.COMPLETED or feed.stream.kind == STATION:
            with self._lock:
                self.feeds.pop(feed.job_id, None)
            return
        feed.completion = notice
        feed.completed_at = time.monotonic()

    def _tend_feeds(self) -> None:
        """Finish feeds whose job completed (rest from the result when pieces are still
        missing after :data:`FEED_GRACE_S`) and drop stale ones."""
        now = time.monotonic()
        with self._lock:
            feeds = list(self.feeds.items())
        for job_id, feed in feeds:
            if feed.completed_at is not None and (feed.done.is_set() or now - feed.completed_at > FEED_GRACE_S):
                with self._lock:
                    self.feeds.pop(job_id, None)
                if not feed.done.is_set():
                    self.pool.submit(self._guard, self._feed_rest, feed)
            elif now - feed.updated > FEED_STALE_S:
                feed.close()
                with self._lock:
                    self.feeds.pop(job_id, None)

    def _feed_rest(self, feed: PartialFeed) -> None:
        """Queue what a completed job's lost pieces would have, from its result."""
        notice = feed.completion or {}
        job = self.ctx.jobs.get(feed.job_id)
        if job is None or not job.output_blob:
            feed.close()
            return
        spliced = job.spec.assembly is Assembly.SPLICE
        decoded = audio.decode_wav(self._result_wav(job.id, job.output_blob,
                                                    job.spec.output_seconds if spliced else None), max_seconds=1e9)
        output = audio.tail(decoded.samples, decoded.sample_rate, job.spec.output_seconds) if spliced \
            else decoded.samples
        feed.stream.log.warning("streamed pieces missing; the rest comes from the result", job_id=job.id)
        if not feed.rest_from(output, decoded.sample_rate):
            feed.close()
            if feed.stream.kind == ONESHOT:
                feed.stream.played_jobs.discard(job.id)
                self._append_oneshot(feed.stream)
            else:
                self._append_session_result(feed.stream, {"job_id": job.id, "blob_id": notice.get("blob_id")
                                                          or job.output_blob})

    @staticmethod
    def _guard(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("stream audio task failed", task=getattr(fn, "__name__", "?"))

    # ------------------------------------------------------------ session audio
    def _result_wav(self, job_id: str, blob_id: str, tail_s: float | None) -> bytes:
        """A session result, or a file ending with at least its last ``tail_s`` seconds.
        :raises KeyError: it is in neither Redis nor GridFS (after a wait)."""
        wav = delivery.read_result(self.ctx, job_id, blob_id, tail_s=tail_s, stored_wait_s=RESULT_WAIT_S)
        if wav is None:
            raise KeyError(blob_id)
        return bytes(wav)

    def _append_session_result(self, stream: LiveStream, notice: dict[str, Any]) -> None:
        """Append what a session generation added: the model's whole output (a bang); for
        a result spliced onto its input (continue, retry) the model's output after its
        prompt, crossfaded over the end of what was streamed (or, when the stream had run
        dry, with the prompt for context)."""
        job_id, blob_id = notice["job_id"], notice.get("blob_id") or ""
        job = self.ctx.jobs.get(job_id)
        if job is None:
            return
        spec = job.spec
        spliced = spec.assembly is Assembly.SPLICE
        decoded = audio.decode_wav(self._result_wav(job_id, blob_id, spec.output_seconds if spliced else None),
                                   max_seconds=1e9)
        x, rate = decoded.samples, decoded.sample_rate
        overlap = 0.0
        if spliced:
            crossfade_s = stream.crossfade_frames / RATE
            if stream.buffer.buffered_frames > stream.crossfade_frames:
                x, overlap = audio.tail(x, rate, spec.new_seconds + crossfade_s), crossfade_s
            else:
                x = audio.tail(x, rate, spec.output_seconds)
        stream.append(x, rate, overlap_s=overlap, meta={"job_id": job_id, "kind": job.kind})
        stream.log.info("session generation streamed", job_id=job_id, generation=job.kind)

    def _append_oneshot(self, stream: LiveStream) -> None:
        """A one-shot stream plays its job's result once, when the job has completed (a
        stream opened, or taken over, after that plays it at once)."""
        with self._lock:
            job = self.ctx.jobs.get(stream.ref)
            if job is None or job.status is not JobStatus.COMPLETED or not job.output_blob \
                    or job.id in stream.played_jobs:
                return
            stream.played_jobs.add(job.id)
        decoded = audio.decode_wav(self._result_wav(job.id, job.output_blob, None), max_seconds=1e9)
        stream.append(decoded.samples, decoded.sample_rate, meta={"job_id": job.id, "kind": job.kind,
                                                                 "prompt": job.spec.description or ""})
        stream.log.info("one-shot generation streamed", job_id=job.id)

    def _preroll(self, stream: LiveStream) -> None:
        """A new session stream starts with the end of the session's current audio."""
        seconds = self.settings.hls_session_preroll_s
        session = self.ctx.sessions.get(stream.ref)
        if session is None or seconds <= 0:
            return
        wav = delivery.session_audio(self.ctx, session, stored_wait_s=RESULT_WAIT_S)
        if wav is None:
            return
        decoded = audio.decode_wav(wav, max_seconds=1e9)
        stream.append(audio.tail(decoded.samples, decoded.sample_rate, seconds), decoded.sample_rate,
                      meta={"kind": "preroll"})
