"""Socket.IO adapters for the device protocol: parse, call the service, reply.

Each handler is wrapped by :func:`_adapter`, which maps every failure to one ``error``
event with a stable code; nothing a client sends can take the handler (or server) down.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from flask_socketio import SocketIO, emit, join_room, leave_room

from g4l.errors import G4LError, Internal, InvalidRequest
from g4l.log import get_logger
from g4l.services.sessions import Accepted, SessionService
from g4l.web import metrics
from g4l.web.api.access import socket_caller
from g4l.web.relay import Relay
from plugin_protocol import events
from plugin_protocol.normalize import PayloadError, as_object, parse_payload
from plugin_protocol.payloads import (AudioChunk, BeginRestoreAudio, ContinueMusicRequest, ProcessAudioRequest,
                                      ProgressStatusRequest, RetryMusicRequest, SessionRef, UpdateCroppedAudio)

log = get_logger(__name__)


def _session_hint(raw: Any) -> str | None:
    """The session id a (possibly invalid) payload names, for the error event."""
    try:
        value = as_object(raw).get("session_id")
    except PayloadError:
        return None
    return value.strip()[:64] if isinstance(value, str) and value.strip() else None


def _client_key() -> str:
    """Who the socket is: its API key's owner id (the remote address when keys are off).
    Rate limits count per client key; sessions record it as their owner."""
    return socket_caller().owner


def _adapter(event: str) -> Callable:
    def wrap(handler: Callable[[Any], None]) -> Callable[..., None]:
        @functools.wraps(handler)
        def run(raw: Any = None, *_extra: Any) -> Any:
            metrics.EVENTS.labels(event).inc()
            try:
                return handler(raw)
            except PayloadError as exc:
                metrics.ERRORS.labels(InvalidRequest.code).inc()
                emit(events.ERROR, InvalidRequest(exc.message, session_id=_session_hint(raw)).to_payload())
            except G4LError as exc:
                metrics.ERRORS.labels(exc.code).inc()
                if exc.session_id is None:
                    exc.session_id = _session_hint(raw)
                emit(events.ERROR, exc.to_payload())
                log.info("request refused", socket_event=event, code=exc.code, session_id=exc.session_id,
                         error=exc.message)
            except Exception:
                metrics.ERRORS.labels(Internal.code).inc()
                log.exception("handler crashed", socket_event=event, session_id=_session_hint(raw))
                emit(events.ERROR, Internal("internal server error", session_id=_session_hint(raw)).to_payload())
        return run
    return wrap


def register(socketio: SocketIO, service: SessionService, relay: Relay) -> None:
    """Attach every device event handler to ``socketio``."""

    def _join_owned(session_id: str) -> None:
        """Join a session's room early (to see its job even if this request is refused),
        but never a session another API key owns."""
        session = service.ctx.sessions.get(session_id)
        if session is not None:
            service.check_owner(session, _client_key())
        join_room(session_id)

    def accepted(result: Accepted) -> None:
        join_room(result.session_id)
        emit(events.RECEIVED_EVENT[result.kind], {"session_id": result.session_id, "job_id": result.job_id})
        status = service.queue_status(result.job_id, result.session_id)
        emit(events.QUEUE_STATUS, status)
        # An idle worker may take the job before this socket joined the room, in which
        # case the relay found nobody to tell: say it here.
        if status["status"] == "processing":
            emit(events.PROCESSING_STARTED, {"session_id": result.session_id, "job_id": result.job_id})

    @socketio.on(events.PROCESS_AUDIO)
    @_adapter(events.PROCESS_AUDIO)
    def bang(raw: Any) -> None:
        accepted(service.bang(parse_payload(raw, ProcessAudioRequest), _client_key(), owner=_client_key()))

    @socketio.on(events.CONTINUE_MUSIC)
    @_adapter(events.CONTINUE_MUSIC)
    def continue_music(raw: Any) -> None:
        req = parse_payload(raw, ContinueMusicRequest)
        if req.session_id:
            _join_owned(req.session_id)
        # The result comes back through this node's socket: it holds the upload meanwhile.
        accepted(service.continue_(req, _client_key(), owner=_client_key(), hold_input=True))

    @socketio.on(events.RETRY_MUSIC)
    @_adapter(events.RETRY_MUSIC)
    def retry_music(raw: Any) -> None:
        req = parse_payload(raw, RetryMusicRequest)
        _join_owned(req.session_id)
        accepted(service.retry(req, _client_key(), owner=_client_key()))

    @socketio.on(events.UPDATE_CROPPED_AUDIO)
    @_adapter(events.UPDATE_CROPPED_AUDIO)
    def crop(raw: Any) -> None:
        session_id = service.crop(parse_payload(raw, UpdateCroppedAudio), owner=_client_key())
        join_room(session_id)
        emit(events.UPDATE_CROPPED_AUDIO_COMPLETE, {"message": "Cropped audio updated", "session_id": session_id})

    @socketio.on(events.CLEANUP_SESSION)
    @_adapter(events.CLEANUP_SESSION)
    def cleanup(raw: Any) -> None:
        req = parse_payload(raw, SessionRef)
        service.cleanup(req.session_id, owner=_client_key())
        leave_room(req.session_id)
        emit(events.CLEANUP_COMPLETE, {"message": "Session cleaned up", "session_id": req.session_id})

    @socketio.on(events.VERIFY_SESSION)
    @_adapter(events.VERIFY_SESSION)
    def verify(raw: Any) -> dict:
        req = parse_payload(raw, SessionRef)
        status = service.status(req.session_id, owner=_client_key())
        if status["exists"]:
            join_room(req.session_id)
        emit(events.SESSION_STATUS, status)
        if status["exists"]:
            _redeliver_missed(req.session_id)
        return status  # also the acknowledgement, for clients that use emit-with-ack

    @socketio.on(events.REQUEST_PROGRESS_STATUS)
    @_adapter(events.REQUEST_PROGRESS_STATUS)
    def progress_status(raw: Any) -> None:
        req = parse_payload(raw, ProgressStatusRequest)
        status = service.status(req.session_id, owner=_client_key())
        if status["exists"]:
            join_room(req.session_id)
            emit(events.PROGRESS_UPDATE, {"progress": status["progress"], "session_id": req.session_id})
            job_id = service.ctx.sessions.require(req.session_id).get("job_id")
            if job_id and status["generation_in_progress"]:
                emit(events.QUEUE_STATUS, service.queue_status(job_id, req.session_id))
        emit(events.SESSION_STATUS, status)
        if status["exists"]:
            _redeliver_missed(req.session_id)

    @socketio.on(events.BEGIN_RESTORE_AUDIO)
    @_adapter(events.BEGIN_RESTORE_AUDIO)
    def begin_restore(raw: Any) -> None:
        req = parse_payload(raw if raw is not None else {}, BeginRestoreAudio)
        session_id, chunk_size = service.begin_restore(req, owner=_client_key())
        join_room(session_id)
        emit(events.READY_FOR_CHUNKS, {"session_id": session_id, "chunk_size": chunk_size})

    @socketio.on(events.AUDIO_CHUNK)
    @_adapter(events.AUDIO_CHUNK)
    def audio_chunk(raw: Any) -> None:
        req = parse_payload(raw, AudioChunk)
        received, missing, complete = service.add_chunk(req.session_id, req.chunk_index, req.total_chunks,
                                                        req.chunk, req.is_last, owner=_client_key())
        emit(events.CHUNK_RECEIVED, {"session_id": req.session_id, "chunk_index": req.chunk_index,
                                     "total_chunks": req.total_chunks, "received_chunks": received})
        if missing:
            emit(events.CHUNKS_MISSING, {"session_id": req.session_id, "missing_chunks": missing})
        elif complete:
            join_room(req.session_id)
            emit(events.RESTORE_COMPLETE, {"message": "Audio restored successfully", "session_id": req.session_id})

    @socketio.on(events.GET_LISTEN_URL)
    @_adapter(events.GET_LISTEN_URL)
    def get_listen_url(raw: Any) -> dict:
        from g4l.services.listen import ListenService  # live listening over HLS (docs/hls.md)

        req = parse_payload(raw, SessionRef)
        session = service.ctx.sessions.get(req.session_id)
        if session is not None:
            service.check_owner(session, _client_key())
        link = ListenService(service.ctx).session_link(req.session_id)
        emit(events.LISTEN_URL, link)
        return link

    def _redeliver_missed(session_id: str) -> None:
        """A result that finished while the client was away is sent on its return."""
        session = service.ctx.sessions.get(session_id)
        if session is None or session.busy:
            return
        job_id = session.get("job_id")
        if job_id and session.get("last_output_blob") and session.get("delivered") != job_id:
            job = service.ctx.jobs.get(job_id)
            if job is not None and job.status == "completed" and job.output_blob:
                relay.deliver(session_id, job_id, job.kind, job.output_blob)
