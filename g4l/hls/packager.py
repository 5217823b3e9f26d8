"""The packager process's core: which streams run here, and what audio they get.

- Every stream listed in :data:`g4l.keys.STREAMS` is run by exactly one packager process:
  the first to take its lease (a Redis key with a TTL, refreshed every tick). A packager
  that dies loses its leases and another one (or its restarted self) takes the streams
  over, continuing their playlists after an ``EXT-X-DISCONTINUITY``.
- New audio arrives by the ``g4l:notices`` channel: a COMPLETED notice of a session that
  has a listen stream appends that generation's new audio; a station's COMPLETED notice
  wakes its :class:`StationDriver`. Audio is read from Redis (the short-lived result
  key) or GridFS, never from the notice itself.
- Each tick publishes every stream's status (buffered seconds, health, prompt playing)
  into its Redis hash and stops streams that were stopped or idled out.

All of it runs in plain OS threads (this process does not use gevent).
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
from g4l.hls.stations import StationDriver
from g4l.hls.stream import LiveStream
from g4l.jobs import handoff, notices
from g4l.log import get_logger
from g4l.services.listen import SESSION, STATION, ListenService, buffer_health

log = get_logger(__name__)

TICK_S = 0.5
LEASE_S = 10
CLEANUP_EVERY_S = 10.0
SESSION_KINDS = ("bang", "continue", "retry")
#: How long to wait for a session result to show up in storage.
RESULT_WAIT_S = 30.0
#: A continue's new audio may be a few frames short of the model's nominal length.
TAIL_SLACK_S = 0.01


class Packager:
    """Runs this process's share of the live streams until :meth:`stop`."""

    def __init__(self, ctx: Context, name: str | None = None) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.listen = ListenService(ctx)
        self.streams: dict[str, LiveStream] = {}
        self.drivers: dict[str, StationDriver] = {}
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hls-audio")
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._last_cleanup = 0.0

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
            self._publish(token, stream)
        if time.monotonic() - self._last_cleanup > CLEANUP_EVERY_S:
            self._last_cleanup = time.monotonic()
            self.listen.cleanup()

    def _try_open(self, token: str) -> None:
        r = self.ctx.redis
        info = r.hgetall(keys.listen(token))
        if not info or info.get("state") == "stopped":
            r.srem(keys.STREAMS, token)
            return
        if not r.set(keys.stream_owner(token), self.name, nx=True, ex=LEASE_S):
            return  # another packager runs it
        kind, ref = info.get("kind", ""), info.get("ref", "")
        stream = LiveStream(token, kind, ref, self.settings)
        stream.start()
        self.streams[token] = stream
        if kind == STATION:
            driver = StationDriver(self.ctx, ref, stream)
            self.drivers[token] = driver
            self.pool.submit(self._guard, driver.resume)
        elif kind == SESSION:
            self.pool.submit(self._guard, self._preroll, stream)

    def _close(self, token: str, *, delete: bool) -> None:
        stream = self.streams.pop(token, None)
        self.drivers.pop(token, None)
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
        with self.ctx.redis.pipeline() as p:
            p.hset(keys.listen(token), mapping={**fields, "packager": self.name, "updated": time.time()})
            p.expire(keys.listen(token), self.settings.retention_seconds)
            p.execute()

    # ------------------------------------------------------------ notices
    def _notice_loop(self) -> None:
        while not self._stop.is_set():
            pubsub = self.ctx.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(keys.NOTICES)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message.get("type") == "message":
                        try:
                            self.on_notice(notices.decode(message["data"]))
                        except Exception:
                            log.exception("handling a notice failed")
            except redis.RedisError as exc:
                log.warning("notice subscription lost; resubscribing", error=str(exc)[:200])
                time.sleep(1.0)
            finally:
                try:
                    pubsub.close()
                except Exception:
                    pass

    def on_notice(self, notice: dict[str, Any]) -> None:
        """React to a job notice: new audio for a session stream, or a station's job done."""
        if notice.get("type") not in (notices.COMPLETED, notices.FAILED, notices.CANCELED):
            return
        ref = notice.get("session_id") or ""
        kind = notice.get("kind") or ""
        if kind == "station":
            for token, driver in list(self.drivers.items()):
                if driver.station_id == ref:
                    self.pool.submit(self._guard, driver.tick)
            return
        if kind not in SESSION_KINDS or notice.get("type") != notices.COMPLETED:
            return
        token = self.ctx.redis.hget(keys.session(ref), "listen_token") or ""
        stream = self.streams.get(token)
        if stream is not None:
            self.pool.submit(self._guard, self._append_session_result, stream, notice)

    @staticmethod
    def _guard(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("stream audio task failed", task=getattr(fn, "__name__", "?"))

    # ------------------------------------------------------------ session audio
    def _result_wav(self, job_id: str, blob_id: str, tail_s: float) -> bytes:
        """A session result, or a file ending with its last ``tail_s`` seconds: the
        short-lived Redis hand-off if still there (a continue's new audio alone when that
        covers ``tail_s``), else GridFS."""
        deadline = time.monotonic() + RESULT_WAIT_S
        usable = True
        while True:
            try:
                held = handoff.read(self.ctx.redis_bytes, job_id) if usable else None
                if held is not None:
                    new_s = held.data_seconds()
                    if new_s is None or new_s + TAIL_SLACK_S >= tail_s:
                        return bytes(held.data)
                    return held.assemble(handoff.stored_input(self.ctx, held.splice.input_blob))
            except (KeyError, ValueError):  # unreadable, or its input gone: the stored file
                log.warning("result hand-off unusable; waiting for the stored file", job_id=job_id)
                usable = False
            try:
                return self.ctx.blobs.get(blob_id)
            except KeyError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _append_session_result(self, stream: LiveStream, notice: dict[str, Any]) -> None:
        """Append what a session generation added: a bang's whole result; a continue's
        (or retry's) model output after its prompt, crossfaded over the end of what was
        streamed (or, when the stream had run dry, with the prompt for context)."""
        job_id, blob_id, kind = notice["job_id"], notice.get("blob_id") or "", notice.get("kind")
        whole = 1e9 if kind == "bang" else self.settings.output_seconds  # what is used below, at most
        decoded = audio.decode_wav(self._result_wav(job_id, blob_id, whole), max_seconds=1e9)
        x, rate = decoded.samples, decoded.sample_rate
        overlap = 0.0
        if kind != "bang":
            job = self.ctx.jobs.get(job_id)
            prompt_s = float((job.params if job else {}).get("prompt_duration")
                             or self.settings.default_prompt_seconds)
            output_s = self.settings.output_seconds
            crossfade_s = stream.crossfade_frames / RATE
            if stream.buffer.buffered_frames > stream.crossfade_frames:
                x, overlap = audio.tail(x, rate, output_s - prompt_s + crossfade_s), crossfade_s
            else:
                x = audio.tail(x, rate, output_s)
        stream.append(x, rate, overlap_s=overlap, meta={"job_id": job_id, "kind": kind})
        stream.log.info("session generation streamed", job_id=job_id, generation=kind)

    def _preroll(self, stream: LiveStream) -> None:
        """A new session stream starts with the end of the session's current audio."""
        seconds = self.settings.hls_session_preroll_s
        session = self.ctx.sessions.get(stream.ref)
        if session is None or seconds <= 0:
            return
        blob_id = session.get("current_blob") or ""
        if not blob_id:
            return
        job_id = session.get("job_id") or ""
        try:
            wav = self._result_wav(job_id, blob_id, seconds) if job_id else self.ctx.blobs.get(blob_id)
        except KeyError:
            return
        decoded = audio.decode_wav(wav, max_seconds=1e9)
        stream.append(audio.tail(decoded.samples, decoded.sample_rate, seconds), decoded.sample_rate,
                      meta={"kind": "preroll"})
