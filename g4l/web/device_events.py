"""The device protocol's Socket.IO events (upstream-protocol.md): parse, call one service
method, emit. Errors become ``error`` events in :class:`~g4l.web.socket_namespace.SocketNamespace`."""

from __future__ import annotations

from typing import Any

from flask_socketio import emit, join_room, leave_room

from g4l.jobs import kinds
from g4l.services.listen import ListenService
from g4l.services.sessions import Accepted, SessionService
from g4l.services.snapshot import SessionSnapshot
from g4l.store import redis_wait
from g4l.web.api.access import socket_caller
from g4l.web.relay import Relay
from plugin_protocol import events
from plugin_protocol.normalize import parse_payload
from plugin_protocol.payloads import (
    AudioChunk,
    BeginRestoreAudio,
    ContinueMusicRequest,
    ProcessAudioRequest,
    ProgressStatusRequest,
    RetryMusicRequest,
    SessionRef,
    UpdateCroppedAudio,
)


class DeviceEvents:
    """``on_<event>`` handlers of the device protocol (a mixin of the namespace)."""

    service: SessionService
    relay: Relay
    listen: ListenService

    # ------------------------------------------------------------ generation requests
    def on_process_audio_request(self, raw: Any = None, *_: Any) -> None:
        self._accepted(self.service.bang(parse_payload(raw, ProcessAudioRequest), socket_caller()))

    def on_continue_music_request(self, raw: Any = None, *_: Any) -> None:
        req = parse_payload(raw, ContinueMusicRequest)
        if req.session_id:
            self._join(req.session_id)
        # The result comes back through this node's socket: it holds the upload meanwhile.
        self._accepted(self.service.continue_(req, socket_caller(), hold_input=True))

    def on_retry_music_request(self, raw: Any = None, *_: Any) -> None:
        req = parse_payload(raw, RetryMusicRequest)
        self._join(req.session_id)
        self._accepted(self.service.retry(req, socket_caller()))

    # ------------------------------------------------------------ session operations
    def on_update_cropped_audio(self, raw: Any = None, *_: Any) -> None:
        session_id = self.service.crop(parse_payload(raw, UpdateCroppedAudio), socket_caller())
        join_room(session_id)
        emit(events.UPDATE_CROPPED_AUDIO_COMPLETE, {"message": "Cropped audio updated", "session_id": session_id})

    def on_cleanup_session_request(self, raw: Any = None, *_: Any) -> None:
        req = parse_payload(raw, SessionRef)
        self.service.cleanup(req.session_id, socket_caller())
        leave_room(req.session_id)
        emit(events.CLEANUP_COMPLETE, {"message": "Session cleaned up", "session_id": req.session_id})

    def on_verify_session(self, raw: Any = None, *_: Any) -> dict[str, Any]:
        req = parse_payload(raw, SessionRef)
        snap = self.service.snapshot(req.session_id, socket_caller())
        status = snap.status_payload()
        if snap.exists:
            join_room(req.session_id)
        emit(events.SESSION_STATUS, status)
        self._redeliver(snap)
        return status  # also the acknowledgement, for clients that use emit-with-ack

    def on_request_progress_status(self, raw: Any = None, *_: Any) -> None:
        req = parse_payload(raw, ProgressStatusRequest)
        snap = self.service.snapshot(req.session_id, socket_caller())
        if snap.exists:
            join_room(req.session_id)
            emit(events.PROGRESS_UPDATE, {"progress": snap.progress, "session_id": req.session_id})
            if snap.queue is not None:
                emit(events.QUEUE_STATUS, snap.queue)
        emit(events.SESSION_STATUS, snap.status_payload())
        self._redeliver(snap)

    def on_get_listen_url(self, raw: Any = None, *_: Any) -> dict[str, str]:
        req = parse_payload(raw, SessionRef)
        link = self.listen.session_link(self.service.require(req.session_id, socket_caller()))
        emit(events.LISTEN_URL, link)
        return link

    # ------------------------------------------------------------ chunked restore
    def on_begin_restore_audio(self, raw: Any = None, *_: Any) -> None:
        req = parse_payload(raw if raw is not None else {}, BeginRestoreAudio)
        session_id, chunk_size = self.service.begin_restore(req, socket_caller())
        join_room(session_id)
        emit(events.READY_FOR_CHUNKS, {"session_id": session_id, "chunk_size": chunk_size})

    def on_audio_chunk(self, raw: Any = None, *_: Any) -> None:
        req = parse_payload(raw, AudioChunk)
        received, missing, complete = self.service.add_chunk(req.session_id, req.chunk_index, req.total_chunks,
                                                             req.chunk, req.is_last, socket_caller())
        emit(events.CHUNK_RECEIVED, {"session_id": req.session_id, "chunk_index": req.chunk_index,
                                     "total_chunks": req.total_chunks, "received_chunks": received})
        if missing:
            emit(events.CHUNKS_MISSING, {"session_id": req.session_id, "missing_chunks": missing})
        elif complete:
            join_room(req.session_id)
            emit(events.RESTORE_COMPLETE, {"message": "Audio restored successfully", "session_id": req.session_id})

    # ------------------------------------------------------------ replies
    def _join(self, session_id: str) -> None:
        """Join a session's room early (to see its job even if this request is refused),
        but never a session the caller may not see."""
        if self.service.find(session_id, socket_caller()) is not None:
            join_room(session_id)

    def _accepted(self, result: Accepted) -> None:
        join_room(result.session_id)
        exchange = kinds.of(result.kind).events
        assert exchange is not None, f"{result.kind} jobs are not a device's"  # the service queued a device kind
        emit(exchange.received, {"session_id": result.session_id, "job_id": result.job_id, "seed": result.seed})
        try:
            status = self.service.queue_status(result.job_id, result.session_id)
        except redis_wait.UNAVAILABLE:  # the job is queued: its progress comes once Redis answers again
            return
        emit(events.QUEUE_STATUS, status)
        # An idle worker may take the job before this socket joined the room, in which
        # case the relay found nobody to tell: say it here.
        if status["status"] == "processing":
            emit(events.PROCESSING_STARTED, {"session_id": result.session_id, "job_id": result.job_id})

    def _redeliver(self, snap: SessionSnapshot) -> None:
        """A result that finished while the client was away is sent on its return (read
        from the snapshot just answered: no second look-up on every status probe)."""
        job = self.service.missed_result(snap.session) if snap.session is not None else None
        if job is not None and job.output_blob:
            self.relay.deliver(snap.session_id, job.id, job.kind, job.output_blob)
