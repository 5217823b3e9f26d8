"""terry's transform, whatever protocol it arrives by (Socket.IO ``transform_audio_request``,
gary4juce's ``/api/juce/transform_audio``, ``POST /api/v1/sessions/{id}/transform``, the CLI).

A transform rewrites a session's current audio (or an uploaded take) in a preset's style
with MelodyFlow; the result replaces the session's audio as a new version made from the
one it started from (:mod:`g4l.worker.kinds.transform`). Everything is checked before
anything is written (preset, solver, flowstep, steps, the audio and terry's limits, the
session's state, the caller's rate), so a refused request changes nothing.

Where the input comes from, and what undo then restores:

* a session and no audio: the session's current version;
* a session and audio (the device sends its current file each time): that audio, made
  from the session's current version (as a continue of an uploaded file is);
* audio and no session (gary4juce, a device that has none yet): a new session whose first
  version is the upload, so ``undo_transform`` can go back to it.
"""

from __future__ import annotations

from typing import Any

from g4l import audio
from g4l.errors import Busy, InvalidAudio, InvalidRequest, SessionNotFound, TooLarge
from g4l.jobs.kinds import KindName
from g4l.jobs.records import Job, new_job_id
from g4l.jobs.spec import AudioFormat, Edit, GenerationSpec
from g4l.log import get_logger
from g4l.services.auth import Caller
from g4l.services.sessions import Accepted, SessionService
from g4l.services.uploads import Upload, b64decode
from g4l.store.sessions import Session, SessionStatus
from plugin_protocol.payloads import TransformAudioRequest

log = get_logger(__name__)

KIND = KindName.TRANSFORM
BUSY_MESSAGE = "Transform already in progress"


#: MelodyFlow edits stereo audio, and a take keeps its format (a later continue splices the
#: client's own file): a mono take is refused rather than silently turned into stereo.
MONO = "terry transforms stereo audio and this WAV is mono (1 channel): send it as a stereo WAV"

class TransformService:
    """Queues transforms of device sessions (see the module docstring)."""

    def __init__(self, sessions: SessionService) -> None:
        self.sessions = sessions
        self.ctx = sessions.ctx
        self.settings = sessions.settings
        self.specs = sessions.specs

    def transform(self, req: TransformAudioRequest, caller: Caller) -> Accepted:
        """Queue a transform. :raises InvalidRequest: unknown variation, bad solver, flowstep
        or steps, no audio. :raises InvalidAudio, TooLarge: terry cannot take the audio.
        :raises Busy: a job of the session is queued or running. :raises SessionNotFound:
        no such session of the caller's."""
        session = self.sessions.require(req.session_id, caller) if req.session_id else None
        if session is not None and session.busy:
            raise Busy(BUSY_MESSAGE, session_id=session.id)
        edit, text = self.specs.edit(variation=req.variation, custom_prompt=req.custom_prompt,
                                     flowstep=req.flowstep, solver=req.solver, steps=req.steps)
        model = self.specs.transform_model()
        if req.audio_data is None and (session is None or not session.get("current_blob")):
            raise InvalidRequest("no audio: send audio_data (this session has none stored yet)",
                                 session_id=req.session_id)
        self.sessions.check_capacity(model)
        upload = self.decode(req.audio_data, req.session_id) if req.audio_data is not None else None
        if upload is None:
            assert session is not None
            self._check_stored(session)
        self.sessions.check_rate(caller)
        job_id = new_job_id()
        new_session = session is None
        if session is None:
            assert upload is not None
            # The upload becomes the new session's first version: the transform's parent.
            session_id = self.sessions.new_session_holding(upload, caller)
            session = self.ctx.sessions.require(session_id)
            upload = None  # stored now, as that version
        try:
            try:
                self.ctx.sessions.begin_job(session.id, job_id)
            except Busy:  # a job was queued since the check above
                raise Busy(BUSY_MESSAGE, session_id=session.id) from None
            # Read again now that it is ours: no crop or move can change its version any more.
            session = self.ctx.sessions.require(session.id)
            spec = self._spec(session, upload, edit, text, req.seed)
            job = Job(id=job_id, kind=KIND, session_id=session.id, spec=spec, owner=caller.owner,
                      parent_version=session.current_version)
            self.ctx.sessions.update(session.id, seed=spec.seed)
            self.ctx.queue.enqueue(job, limit=self.settings.max_queue)
        except Exception:
            if new_session:  # the session was made for this job alone
                self.ctx.sessions.delete(session.id)
            else:
                self.ctx.sessions.update_if_job(session.id, job_id, status=SessionStatus.IDLE, progress=0)
            raise
        if upload is not None:
            self.sessions.store_input_later(upload, job)
        log.info("job queued", session_id=session.id, job_id=job_id, kind=KIND, model=spec.model, seed=spec.seed,
                 variation=edit.variation, solver=edit.solver, flowstep=edit.flowstep)
        return Accepted(session.id, job_id, KIND, self.ctx.queue.position(job_id), spec.seed, spec.output_seconds)

    # ------------------------------------------------------------ the input
    def decode(self, text: str, session_id: str | None = None) -> Upload:
        """A client's base64 WAV, checked against terry's limits as well as the server's
        (``G4L_TRANSFORM_MAX_MB``, ``G4L_TRANSFORM_MAX_SECONDS``, ``G4L_TRANSFORM_MIN_RATE``)."""
        s = self.settings
        limit = int(s.transform_max_mb * 1_000_000)
        # base64 is 4 characters per 3 bytes: refuse an oversized take before decoding it.
        if isinstance(text, str) and len(text) // 4 * 3 >= limit + 3:
            raise self._too_large(len(text) // 4 * 3, session_id)
        wav = self.sessions.offload(b64decode, text, s.max_payload_bytes)
        if len(wav) >= limit:
            raise self._too_large(len(wav), session_id)
        try:
            decoded = self.sessions.offload(_decode, wav, s.transform_max_seconds, s.max_input_seconds,
                                            s.max_channels, s.max_sample_rate, s.transform_min_rate)
        except InvalidAudio as exc:
            exc.session_id = session_id
            raise
        if decoded.channels < 2:
            raise InvalidAudio(MONO, session_id=session_id)
        return Upload(wav, decoded)

    def _too_large(self, size: int, session_id: str | None) -> TooLarge:
        return TooLarge(f"the audio is {size / 1e6:.1f} MB; terry takes less than "
                        f"{self.settings.transform_max_mb:g} MB", session_id=session_id)

    def _check_stored(self, session: Session) -> None:
        """The session's current audio is within terry's limits (a long take grown by
        continues, an 8 kHz take a bang accepted)."""
        s = self.settings
        blob = session["current_blob"]
        fmt = self.sessions.stored_format(session.id, blob)
        seconds = self._stored_seconds(session, blob)
        if fmt.channels is not None and fmt.channels < 2:
            raise InvalidAudio(f"the session's audio is mono; {MONO}", session_id=session.id)
        if fmt.sample_rate is not None and fmt.sample_rate < s.transform_min_rate:
            raise InvalidAudio(f"the session's audio is at {fmt.sample_rate} Hz; terry needs at least "
                               f"{s.transform_min_rate} Hz", session_id=session.id)
        if seconds > s.transform_max_seconds:
            raise InvalidAudio(f"the session's audio is {seconds:.1f} s long; terry takes at most "
                               f"{s.transform_max_seconds:g} s", session_id=session.id)

    def _stored_seconds(self, session: Session, blob: str) -> float:
        record = self.ctx.sessions.history(session.id).versions.get(session.current_version or 0)
        if record is not None and record.blob == blob and record.duration:
            return float(record.duration)
        info = self.ctx.blobs.info(blob)
        if info is None:
            raise SessionNotFound("the session's stored audio is gone (retention)", session_id=session.id)
        return float(info.metadata.get("duration") or 0.0)

    def _spec(self, session: Session, upload: Upload | None, edit: Edit, text: str,
              seed: int | None) -> GenerationSpec:
        if upload is not None:
            a = upload.audio
            fmt = AudioFormat(sample_rate=a.sample_rate, channels=a.channels, subtype=a.subtype)
            return self.specs.transform_spec(edit, text, fmt=fmt, input_blob=self.ctx.blobs.new_id(),
                                             seconds=a.duration, seed=seed)
        blob = session["current_blob"]
        return self.specs.transform_spec(edit, text, fmt=self.sessions.stored_format(session.id, blob),
                                         input_blob=blob, seconds=self._stored_seconds(session, blob), seed=seed)


def _decode(wav: bytes, max_seconds: float, server_max_seconds: float, max_channels: int, max_rate: int,
            min_rate: int) -> audio.Audio:
    return audio.decode_wav(wav, max_seconds=min(max_seconds, server_max_seconds), max_channels=max_channels,
                            max_rate=max_rate, min_rate=min_rate)


def result_fields(job: Job | None) -> dict[str, Any]:
    """Fields a transform's result event carries besides the audio (``variation``)."""
    if job is None or job.kind != KIND or job.spec.edit is None:
        return {}
    return {"variation": job.spec.edit.variation}
