"""Relays job notices from Redis to the Socket.IO rooms this web node holds.

Every web node receives every notice; only a node with a socket in the session's room
acts on it. That node reads the result through :mod:`g4l.jobs.delivery` (the short-lived
Redis hand-off, a continue's new audio joined to the upload it holds; GridFS when the
hand-off is gone) and sends it as one pre-encoded packet; audio never rides pub/sub.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import gevent
import numpy as np
import orjson
import pybase64
from flask_socketio import SocketIO

from g4l.context import Context
from g4l.jobs import delivery, kinds, notices
from g4l.jobs.kinds import KindName
from g4l.jobs.queue import QueuePosition
from g4l.log import get_logger
from g4l.services.sessions import SessionService
from g4l.services.transform import result_fields
from g4l.web import transport
from g4l.web.offload import offload
from g4l.web.websocket import Frames
from plugin_protocol import events

log = get_logger(__name__)

#: Notices after which the jobs still waiting have moved up.
POSITION_CHANGES = frozenset({notices.STARTED, notices.COMPLETED, notices.FAILED, notices.CANCELED,
                              notices.QUEUE_CHANGED})
#: Waiting job id -> its new position: read once per notice that moves the queue, and
#: handed to every consumer (the session rooms, the job rooms, the ``/ws`` hub).
Positions = Mapping[str, QueuePosition]
#: A consumer of every notice: the notice, and the positions when the queue moved (else None).
NoticeHook = Callable[[dict[str, Any], Positions | None], None]


class Relay:
    """Subscribes to ``g4l:notices`` in a greenlet and emits to local rooms."""

    def __init__(self, socketio: SocketIO, ctx: Context, service: SessionService) -> None:
        self.socketio = socketio
        self.ctx = ctx
        self.service = service
        self._greenlet: gevent.Greenlet | None = None
        #: Extra consumers of every notice (e.g. the job rooms of g4l.web.api.live).
        self.hooks: list[NoticeHook] = []

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def has_local(self, room: str) -> bool:
        """Whether a socket connected to this node is in ``room``."""
        manager = self.socketio.server.manager
        return any(True for _ in manager.get_participants("/", room))

    def emit(self, event: str, payload: dict[str, Any], room: str) -> None:
        self.socketio.emit(event, payload, to=room)

    def emit_frames(self, frames: Frames, room: str) -> int:
        """Send a pre-encoded Socket.IO event (:func:`audio_event_frames`) to ``room``:
        as it is to websocket clients, re-encoded the ordinary way for a polling one
        (``frames.on_sent`` is then called at once). Returns how many sockets it went to."""
        server = self.socketio.server
        count = 0
        for _sid, eio_sid in list(server.manager.get_participants("/", room)):
            try:
                eio_socket = server.eio._get_socket(eio_sid)
            except KeyError:
                continue  # disconnected meanwhile
            count += 1
            if eio_socket.upgraded:
                server.eio.send_packet(eio_sid, transport.preencoded_packet(frames))
            else:
                server.eio.send(eio_sid, b"".join(frames.parts).decode("utf-8"))
                if frames.on_sent is not None:
                    frames.on_sent()
        return count

    # ------------------------------------------------------------ loop
    def _run(self) -> None:
        notices.listen(self.ctx.redis, self.handle, lambda: False, sleep=gevent.sleep)

    def handle(self, notice: dict[str, Any]) -> None:
        kind = notice.get("type")
        positions: Positions | None = None
        if kind in POSITION_CHANGES:
            try:
                positions = self.ctx.queue.positions()
            except Exception:  # Redis trouble: the next notice tells them
                log.exception("reading the queue's positions failed")
        for hook in self.hooks:
            try:
                hook(notice, positions)
            except Exception:
                log.exception("a notice hook failed")
        session_id = notice.get("session_id") or ""
        local = bool(session_id) and self.has_local(session_id)
        if kind == notices.PROGRESS and local:
            self.emit(events.PROGRESS_UPDATE, {"progress": int(notice["progress"]), "session_id": session_id},
                      session_id)
        elif kind == notices.STARTED:
            if local:
                self.emit(events.PROCESSING_STARTED, {"session_id": session_id, "job_id": notice["job_id"]},
                          session_id)
                self.emit(events.QUEUE_STATUS, self.service.queue_status(notice["job_id"], session_id), session_id)
            self.broadcast_queue(positions)
        elif kind == notices.COMPLETED:
            if local:
                gevent.spawn(self.deliver, session_id, notice["job_id"], notice["kind"], notice["blob_id"])
            else:  # another node delivers it
                self.service.held.discard(notice.get("job_id") or "")
            self.broadcast_queue(positions)
        elif kind == notices.FAILED:
            self.service.held.discard(notice.get("job_id") or "")
            if local:
                self.emit(events.ERROR, {"message": notice["message"], "code": notice["code"],
                                         "session_id": session_id}, session_id)
            self.broadcast_queue(positions)
        elif kind in (notices.CANCELED, notices.QUEUE_CHANGED):
            if kind == notices.CANCELED:
                self.service.held.discard(notice.get("job_id") or "")
            self.broadcast_queue(positions)

    def deliver(self, session_id: str, job_id: str, kind: str, blob_id: str) -> None:
        """Send a finished result to the room: progress 100, then the audio."""
        joined: list[str] = []  # where a spliced result's input came from (for the log)

        def held_input(held_job: str) -> bytes | None:
            wav = self.service.held.pop(held_job)
            joined.append("held" if wav is not None else "stored")
            return wav

        try:
            wav = delivery.read_result(self.ctx, job_id, blob_id, held=held_input, offload=offload, as_array=True)
        finally:
            self.service.held.discard(job_id)
        if wav is None:
            log.error("result blob missing", session_id=session_id, job_id=job_id, blob_id=blob_id)
            return
        event = kinds.result_event(kind) or events.AUDIO_PROCESSED
        # A transform's result names its preset (audio_transformed {..., variation}).
        extra = result_fields(self.ctx.jobs.get(job_id)) if kind == KindName.TRANSFORM else None
        frames = offload(audio_event_frames, event, wav, session_id, extra)
        marked: list[bool] = []

        def mark_delivered() -> None:
            # Once a socket has the whole result: the worker's GridFS write waits for
            # this, and a client that missed it gets it again on verify_session.
            if marked:
                return
            marked.append(True)
            try:
                self.service.mark_delivered(session_id, job_id)
            except Exception:  # runs in a socket's writer: never let it end the connection
                log.exception("marking a result delivered failed", session_id=session_id, job_id=job_id)
            log.info("result delivered", session_id=session_id, job_id=job_id, bytes=len(wav),
                     input=joined[0] if joined else None)

        frames = dataclasses.replace(frames, on_sent=mark_delivered)
        self.emit(events.PROGRESS_UPDATE, {"progress": 100, "session_id": session_id}, session_id)
        self.emit_frames(frames, session_id)
        self.emit(events.QUEUE_STATUS, self.service.ready_status(session_id), session_id)

    def broadcast_queue(self, positions: Positions | None) -> None:
        """Tell every locally connected waiting session its new position."""
        if not positions:
            return
        for job_id, session_id in self.ctx.jobs.session_ids(list(positions)).items():
            if not session_id or not self.has_local(session_id):
                continue
            status = self.service.queue_status(job_id, session_id, positions[job_id])
            self.emit(events.QUEUE_STATUS, status, session_id)
            self.emit(events.QUEUE_UPDATE, {k: status[k] for k in ("message", "position", "total_queued",
                                                                  "estimated_seconds")}, session_id)


def audio_event_frames(event: str, wav: bytes | np.ndarray, session_id: str,
                       extra: dict[str, Any] | None = None) -> Frames:
    """The Socket.IO text packet ``2["<event>",{"audio_data":"<base64>","session_id":...}]``
    in three parts, so the tens of MB of base64 are never copied into one string (the
    base64 alphabet needs no JSON escaping). ``extra`` fields follow ``session_id``. Runs
    in the thread pool."""
    head = b'2["' + event.encode("ascii") + b'",{"audio_data":"'
    more = b"".join(b"," + orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in (extra or {}).items())
    tail = b'","session_id":' + orjson.dumps(session_id) + more + b"}]"
    data = wav.data if isinstance(wav, np.ndarray) else wav
    return Frames((head, pybase64.b64encode(data), tail), text=True)
