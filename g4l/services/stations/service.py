"""Generative stations: endless music from a prompt (or a rotation of prompts).

A station is a record (:class:`g4l.store.stations.StationRecord`, kept by
:class:`~g4l.store.stations.StationStore`) plus a live stream with its own listen token.
This service creates, describes and stops stations and queues their generations; the
packager process drives running ones (:mod:`g4l.hls.station`): it asks for the next
stretch whenever the buffer ahead of the listeners drops below its target, and a worker
runs it (:mod:`g4l.worker.kinds.station`). Everything a station needs to resume after a
restart is in Redis (state) and GridFS (its last generated audio).

With API keys on, a station belongs to the key that started it (another key gets 404),
and one key runs at most ``G4L_STATIONS_PER_KEY`` stations at once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from g4l import keys
from g4l.context import Context
from g4l.errors import InvalidRequest, StationNotFound, StationsFull
from g4l.jobs import lifecycle, partials
from g4l.jobs.kinds import KINDS, KindName
from g4l.jobs.records import Job, JobStatus, new_job_id
from g4l.jobs.spec import Sampling
from g4l.log import get_logger
from g4l.services.auth import Caller
from g4l.services.listen import STATION, ListenService, links, new_token
from g4l.services.models import ModelCatalog
from g4l.services.specs import SpecResolver
from g4l.services.stations.history import StationHistory
from g4l.services.stations.outputs import OutputStore
from g4l.services.stations.policy import (
    DEPLETED,
    BufferPolicy,
    Transition,
    build_policy,
    build_transition,
    next_rotation,
)
from g4l.services.stations.recordings import RecordingStore
from g4l.store.stations import StationRecord, StationStore

log = get_logger(__name__)

MIN_ROTATE_S = 10.0

# KEYS[1]=running stations, KEYS[2]=the owner's stations; ARGV: id, max total, max per owner (0: none)
# -> OK | FULL | QUOTA. Checked and taken in one step, so racing creates cannot overshoot.
_TAKE_SLOT = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 'FULL' end
if tonumber(ARGV[3]) > 0 and #redis.call('SINTER', KEYS[1], KEYS[2]) >= tonumber(ARGV[3]) then
  return 'QUOTA'
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[1])
return 'OK'
"""


def prompt_for(prompts: list[str], rotate_every_s: float, audio_s: float) -> tuple[int, str]:
    """The prompt (index, text) scheduled at ``audio_s`` seconds into the station's music."""
    if not prompts:
        return 0, ""
    if rotate_every_s <= 0 or len(prompts) == 1:
        return 0, prompts[0]
    index = int(audio_s // rotate_every_s) % len(prompts)
    return index, prompts[index]


def old_health(st: StationRecord, policy: BufferPolicy, buffered: float, running: bool, on_air: bool) -> str:
    """``buffer_health`` for clients from before the five states: ``starting`` (nothing
    generated yet), ``empty`` (off the air), ``low`` (CRITICAL and below), ``ok``."""
    if not running:
        return "stopped"
    if st.generations == 0:
        return "starting"
    if not on_air or buffered <= 0.05:
        return "empty"
    return "ok" if buffered >= policy.critical_s else "low"


class StationService:
    """Create, describe, stop and feed stations."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.r = ctx.redis
        self.store = StationStore(ctx.redis)
        self.listen = ListenService(ctx)
        self.specs = SpecResolver(ctx.settings)
        self._take_slot = ctx.redis.register_script(_TAKE_SLOT)
        self.outputs = OutputStore(ctx)
        self.recordings = RecordingStore(ctx)
        self.history = StationHistory(ctx)

    def create(self, caller: Caller, *, prompts: list[str], model: str | None = None, temperature: float | None = None,
               top_k: int | None = None, cfg_coef: float | None = None, rotate_every_s: float = 0.0,
               name: str | None = None, record: bool = False,
               buffer_thresholds_s: Mapping[str, Any] | str | None = None, buffer_resume_s: float | None = None,
               chunk_seconds: float | None = None, transition: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Start a station playing ``prompts`` (rotated every ``rotate_every_s`` seconds of
        music when there are several, handing over by ``transition``); ``name`` is shown on
        its outputs' video card; with ``record`` its program is recorded into files
        (:mod:`g4l.services.stations.recordings`). ``buffer_thresholds_s``, ``buffer_resume_s`` and
        ``chunk_seconds`` set its buffer policy (:func:`~g4l.services.stations.policy.build_policy`;
        none given: ~45 s ahead, as stations always were).

        :returns: ``{station_id, playlist_url, page_url, status}`` (URLs are relative).
        :raises InvalidRequest: no prompt, a rotation under :data:`MIN_ROTATE_S`, a bad
            buffer policy or transition (nothing is created).
        :raises ModelNotAllowed: a model outside the allowlist.
        :raises StationsFull: ``max_stations`` stations already run, or this key's quota.
        """
        prompts = [p.strip() for p in prompts if p and p.strip()]
        if not prompts:
            raise InvalidRequest("send a prompt (or a genre, or a list of prompts)")
        if 0 < rotate_every_s < MIN_ROTATE_S:
            raise InvalidRequest(f"rotate_every_s must be 0 (never) or at least {MIN_ROTATE_S:g}")
        settings = self.ctx.settings
        policy = build_policy(settings, buffer_thresholds_s, buffer_resume_s, chunk_seconds)
        handover = build_transition(settings, transition)
        if handover.kind != "continue" and (rotate_every_s <= 0 or len(prompts) < 2):
            raise InvalidRequest("a transition needs a rotation: several prompts and rotate_every_s")
        if handover.kind == "crossfade" and handover.seconds * 2 > rotate_every_s:
            raise InvalidRequest("a crossfade lasts at most half of rotate_every_s")
        model = self.specs.model(model)
        ModelCatalog(self.ctx).require_available(model)
        sampling = self.specs.sampling({"temperature": temperature, "top_k": top_k, "cfg_coef": cfg_coef})
        station_id = str(uuid.uuid4())
        quota = settings.stations_per_key if caller.keyed else 0
        taken = self._take_slot(keys=[keys.STATIONS, keys.owner_stations(caller.owner)],
                                args=[station_id, settings.max_stations, quota])
        if taken == "FULL":
            raise StationsFull(f"{settings.max_stations} stations are already running; stop one first")
        if taken == "QUOTA":
            raise StationsFull(f"this key already runs {quota} station(s), its most; stop one first")
        token = new_token()
        index, first = prompt_for(prompts, rotate_every_s, 0.0)
        self.store.create(StationRecord(
            id=station_id, token=token, status="running", model=model, owner=caller.owner, prompts=prompts,
            rotate_every_s=rotate_every_s, sampling=sampling.model_dump_json(), created=time.time(), audio_s=0,
            generations=0, last_blob="", job_id="", generating_prompt=first, errors=[], rotations=[],
            name=(name or "").strip(), record=record, buffer_policy=policy.dumps(), transition=handover.dumps(),
            queue_s=0, play_seq=0, play_offset_s=0, on_air=False))
        self.listen.open_stream(token, STATION, station_id)
        log.info("station created", station_id=station_id, stream=token[:8], model=model, prompts=len(prompts),
                 rotate_every_s=rotate_every_s, thresholds_s=policy.thresholds(), chunk_s=policy.chunk_s,
                 transition=handover.kind)
        return {"station_id": station_id, **links(token), "status": "starting"}

    def require(self, station_id: str, caller: Caller) -> StationRecord:
        """The station's record. :raises StationNotFound: unknown, or another key's."""
        found = self.store.get(station_id)
        if found is None or not caller.can_see(found.owner):
            raise StationNotFound(f"no station {station_id}" if keys.valid_id(station_id) else "no such station")
        return found

    def get(self, station_id: str, caller: Caller) -> dict[str, Any]:
        """Status: buffer (seconds stored and in memory, health state and thresholds),
        current and next prompt, generation speed, listeners, rotations, errors."""
        st = self.require(station_id, caller)
        token = st.token
        stream = self.r.hgetall(keys.listen(token)) if token else {}
        running = st.running
        policy = BufferPolicy.loads(st.buffer_policy, self.ctx.settings)
        buffered = st.buffered_s if running else 0.0
        state = st.buffer_state or policy.state(buffered)
        on_air = st.on_air
        job = self.ctx.jobs.get(st.job_id) if st.job_id else None
        prompts = st.prompts
        rotate = st.rotate_every_s
        transition = Transition.loads(st.transition)
        playing_s = st.playing_audio_s
        upcoming = next_rotation(prompts, rotate, playing_s)
        next_in = None
        if upcoming is not None:
            next_in = round(max(0.0, upcoming[1] - playing_s) + (transition.seconds if transition.kind == "break"
                                                                  else 0.0), 2)
        speed = st.rtf
        wall = sum(w for _, w in speed)
        return {
            "station_id": station_id, "name": st.name or None, **links(token), "status": st.status or None,
            "stopped_reason": st.stopped_reason or None,
            "model": st.model or None, "temperature": self.sampling(st).temperature,
            "prompts": prompts, "rotate_every_s": rotate,
            "transition": {"kind": transition.kind, "seconds": transition.seconds},
            "current_prompt": stream.get("playing_prompt") or st.generating_prompt or None,
            "next_prompt": upcoming[0] if upcoming else None, "next_prompt_in_s": next_in,
            "generating_prompt": st.generating_prompt or None,
            "buffered_seconds": round(buffered, 3),
            "buffer_state": state if running else DEPLETED,
            "buffer_state_since": st.buffer_state_since or None,
            "buffer_thresholds_s": policy.thresholds(),
            "buffer_resume_s": policy.resume_s,
            "chunk_seconds": policy.chunk_s or None,
            "on_air": running and on_air,
            "target_buffer_seconds": policy.healthy_s,
            "buffer_health": old_health(st, policy, buffered, running, on_air),
            "buffer_low": running and old_health(st, policy, buffered, running, on_air) in ("low", "empty"),
            "realtime_factor": round(sum(a for a, _ in speed) / wall, 3) if wall else None,
            "underruns": int(stream.get("underruns") or 0),
            "played_seconds": float(stream.get("position_s") or 0),
            "generated_seconds": st.audio_s,
            "generations": st.generations,
            "generating": bool(job and job.status.pending),
            "progress": job.progress if job and job.status is JobStatus.RUNNING else 0,
            "listeners": self.listen.listeners(token) if token else 0,
            "rotations": st.rotations,
            "errors": st.errors,
            "created": st.created,
            "outputs": self.outputs.describe(station_id),
            "recording": st.record and running,
        }

    def list(self, caller: Caller) -> list[dict[str, Any]]:
        """The running stations the caller may see, oldest first."""
        found = []
        for station_id in sorted(self.r.smembers(keys.STATIONS)):
            try:
                found.append(self.get(station_id, caller))
            except StationNotFound:
                continue
        return sorted(found, key=lambda st: st["created"])

    def stop(self, station_id: str, caller: Caller, reason: str = "stopped") -> dict[str, Any]:
        """Stop generating and streaming; the stream's segments are deleted."""
        st = self.require(station_id, caller)
        with self.r.pipeline() as p:
            self.store.update(station_id, p, status="stopped", stopped_reason=reason)
            p.srem(keys.STATIONS, station_id)
            p.srem(keys.owner_stations(st.owner), station_id)
            self.store.expire(station_id, self.ctx.settings.retention_seconds, p)
            # The packager deletes the stored audio (StationDriver.discard); the list expires anyway.
            p.expire(keys.station_chunks(station_id), self.ctx.settings.retention_seconds)
            p.execute()
        self.outputs.stop_all(station_id, reason)
        self.history.keep_for(station_id, self.ctx.settings.retention_seconds)
        if st.job_id:
            lifecycle.request_cancel(self.ctx, st.job_id)
        if st.token:
            self.listen.stop(st.token, reason)
        log.info("station stopped", station_id=station_id, reason=reason)
        return {"station_id": station_id, "status": "stopped"}

    # ------------------------------------------------------------ outputs
    def add_output(self, station_id: str, caller: Caller, *, url: str, stream_key: str,
                   visual: bytes | None = None) -> dict[str, Any]:
        """Push a running station to an RTMP(S) server (see :class:`OutputStore.add`).

        :raises StationNotFound: unknown, or another key's.
        :raises InvalidRequest: the station is stopped; a bad URL, key or visual.
        :raises OutputsFull: too many outputs on this station.
        """
        st = self.require(station_id, caller)
        if not st.running:
            raise InvalidRequest("the station is stopped: start a new one")
        return self.outputs.add(station_id, url=url, stream_key=stream_key, visual=visual)

    def stop_output(self, station_id: str, output_id: str, caller: Caller) -> dict[str, Any]:
        """Stop one of a station's outputs. :raises StationNotFound, OutputNotFound:"""
        self.require(station_id, caller)
        return self.outputs.stop(station_id, output_id)

    def broadcasting(self, station_id: str) -> bool:
        """Whether the station pushes to an RTMP output, records, or keeps a buffer longer
        than ``G4L_STATION_BUFFER_S`` (it builds hours ahead for an audience elsewhere):
        then it is never idle."""
        st = self.store.fields(station_id, "record", "buffer_policy")
        long_buffer = BufferPolicy.loads(st["buffer_policy"] or None, self.ctx.settings).healthy_s \
            > self.ctx.settings.station_buffer_s
        return bool(self.outputs.live(station_id)) or st["record"] or long_buffer

    # ------------------------------------------------------------ recordings
    def list_recordings(self, station_id: str, caller: Caller) -> Sequence[dict[str, Any]]:
        """The station's recordings kept, oldest first. :raises StationNotFound:"""
        self.require(station_id, caller)
        return self.recordings.list(station_id)

    def recording_blob(self, station_id: str, recording_id: str, caller: Caller) -> str:
        """The stored file of one recording. :raises StationNotFound, NotFound:"""
        self.require(station_id, caller)
        return self.recordings.blob(station_id, recording_id)

    def buffer_history(self, station_id: str, caller: Caller, since: float | None = None) -> dict[str, Any]:
        """The station's buffer samples (:mod:`g4l.services.stations.history`), oldest
        first, after ``since`` when given. :raises StationNotFound:"""
        self.require(station_id, caller)
        return {"station_id": station_id, "every_s": self.history.every_s, "window_s": self.history.window_s,
                "samples": self.history.read(station_id, since)}

    # ------------------------------------------------------------ generations
    @staticmethod
    def sampling(st: StationRecord) -> Sampling:
        """A station's sampling parameters."""
        return Sampling.model_validate_json(st.sampling) if st.sampling else Sampling()

    def queue_stretch(self, station_id: str, st: StationRecord, *, index: int, prompt: str, audio_start_s: float,
                      new_seconds: float, fresh: bool = False, overhang_s: float = 0.0,
                      job_id: str | None = None, streamed: bool = False) -> Job:
        """Queue the station's next stretch: ``new_seconds`` of music continuing its last
        one (from nothing when ``fresh``: a new prompt after a break or crossfade) with
        ``prompt`` (number ``index`` of its rotation) at ``audio_start_s`` on its own
        timeline, of which ``overhang_s`` lie past the rotation boundary (under a
        crossfade); background priority (interactive jobs go first). Past the model's
        window AudioCraft extends the generation (``G4L_STATION_MAX_CHUNK_S`` at most).
        ``streamed``: its pieces are published while it is generated (asked before it is
        queued, so its first piece is too); ``job_id``: the id to give it (the driver
        follows it before it can start)."""
        previous = None if fresh else (st.last_blob or None)
        spec = self.specs.station_spec(model=st.model, sampling=self.sampling(st), description=prompt,
                                       previous_blob=previous, new_seconds=round(new_seconds, 3),
                                       labels={"prompt_index": index, "audio_start_s": round(audio_start_s, 3),
                                               "overhang_s": round(overhang_s, 3)})
        # No owner on the job: a station's stretches are not the key's jobs (GET /api/v1/jobs).
        job = Job(id=job_id or new_job_id(), kind=KindName.STATION, session_id=station_id, spec=spec,
                  priority=KINDS[KindName.STATION].priority)
        if streamed:
            partials.want(self.r, job.id)
        self.ctx.queue.enqueue(job)
        self.store.update(station_id, job_id=job.id, generating_prompt=prompt, generating_index=index)
        return job
