"""``WS /ws``: job progress over a plain websocket (not Socket.IO), as the TellUrStori
service's clients use it. Messages are JSON text frames.

Client -> server::

    {"type": "subscribe", "job_id": "<id>"}     # the caller's job (others: NOT_FOUND)
    {"type": "unsubscribe", "job_id": "<id>"}
    {"type": "ping"}

Server -> client: ``{"type": "connected"}`` first; then per subscribed job
``{"type": T, "job_id", "job": <GET /api/v1/status/<id> body>}`` with ``T`` one of
``subscribed`` (the state at once; for a job that has already ended, followed by its end),
``progress`` (queued position or model progress
changed, or it started), ``completed`` (``job.audio_url`` is the download), ``failed``
(``job.error_message``), ``cancelled``; a subscription ends with the job. Also
``{"type": "unsubscribed", "job_id"}``, ``{"type": "pong"}``, and for a bad message
``{"type": "error", "code", "message"}`` (the connection stays open).

The API key goes in the ``X-API-Key`` header of the upgrade request (401 without one
when keys are on; 429 past :data:`MAX_CONNECTIONS_PER_CALLER` open connections of one key or
address). A connection holds at most :data:`MAX_SUBSCRIPTIONS` jobs; messages
over 64 KB close it (1009); a connection silent for 5 minutes is closed (send a ping,
a websocket ping frame or ``{"type": "ping"}``, more often than that). Each connection
has its own writer greenlet and a bounded queue, so a slow client never holds up the
notice relay.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gevent
import orjson
from flask import Blueprint
from gevent.queue import Full, Queue

from g4l.errors import G4LError, InvalidRequest, RateLimited, Unauthorized
from g4l.jobs.records import JobStatus
from g4l.log import get_logger
from g4l.services.auth import HEADER, ApiKeys, Caller
from g4l.services.jobs import JobService
from g4l.web import websocket
from g4l.web.api.routing import operation
from g4l.web.compat.tellurstori import stori_status
from g4l.web.relay import Positions
from g4l.web.transport import client_socket

log = get_logger(__name__)

PATH = "/ws"
MAX_SUBSCRIPTIONS = 100
#: Open connections one key (or, keys off, one address) may hold on a web process.
MAX_CONNECTIONS_PER_CALLER = 16
MAX_MESSAGE_BYTES = 64 * 1024
#: Messages waiting for a slow client; past this the connection is closed (it can resubscribe).
OUTBOX = 256
_FINAL_TYPE = {JobStatus.COMPLETED: "completed", JobStatus.FAILED: "failed", JobStatus.CANCELED: "cancelled"}


class Connection:
    """One client: its websocket, caller, subscriptions and outgoing queue."""

    def __init__(self, ws: websocket.WebSocket, caller: Caller) -> None:
        self.ws = ws
        self.caller = caller
        self.jobs: set[str] = set()
        self.outbox: Queue = Queue(OUTBOX)
        self.open = True

    def push(self, message: dict[str, Any] | str) -> None:
        """Queue a message (a dict, or one already encoded); a client too far behind is
        dropped at once. Never blocks: this runs in the notice relay's greenlet."""
        if not self.open:
            return
        try:
            self.outbox.put_nowait(message if isinstance(message, str) else orjson.dumps(message).decode())
        except Full:
            log.warning("job socket too slow; dropping it", jobs=len(self.jobs))
            self.open = False
            self.ws.abort()  # wakes the reader and the writer; a close frame could wait on the send lock

    def writer(self) -> None:
        while self.open:
            text = self.outbox.get()
            if text is None:
                return
            try:
                self.ws.send(text)
            except (websocket.ConnectionClosed, OSError):
                self.open = False
                return


class JobSocketHub:
    """Every ``/ws`` connection of this web process, by the jobs they follow."""

    def __init__(self, jobs: JobService, keys: ApiKeys) -> None:
        self.jobs = jobs
        self.keys = keys
        self.by_job: dict[str, set[Connection]] = {}
        #: Open connections per owner (key, or address without keys).
        self.connections: dict[str, int] = {}

    # ------------------------------------------------------------ notices (relay hook)
    def on_notice(self, notice: dict[str, Any], positions: Positions | None) -> None:
        job_id = notice.get("job_id") or ""
        if job_id in self.by_job:
            self._send_state(job_id)
        for waiting, position in (positions or {}).items():  # waiting jobs moved up
            if waiting != job_id and waiting in self.by_job:
                view = self.jobs.peek(waiting, position)
                if view is not None and view.job.status is JobStatus.QUEUED:
                    self._send_state(waiting, view)

    def _send_state(self, job_id: str, view: Any = None, only: Connection | None = None,
                    kind: str | None = None) -> None:
        view = view or self.jobs.peek(job_id)
        if view is None:
            return
        final = _FINAL_TYPE.get(view.job.status)
        body = stori_status(view, self.jobs.result_size(view.job)).model_dump(mode="json")
        message = orjson.dumps({"type": kind or final or "progress", "job_id": job_id, "job": body}).decode()
        targets = [only] if only is not None else list(self.by_job.get(job_id, ()))
        for conn in targets:
            conn.push(message)
        if kind and final:  # subscribed to a job that has already ended: say how it ended
            for conn in targets:
                conn.push(orjson.dumps({"type": final, "job_id": job_id, "job": body}).decode())
        if final and only is None:  # a subscription ends with its job
            for conn in targets:
                conn.jobs.discard(job_id)
            self.by_job.pop(job_id, None)

    # ------------------------------------------------------------ messages
    def handle(self, conn: Connection, raw: str | bytes) -> None:
        """Act on one client message (a bad one is answered with an ``error`` message)."""
        try:
            try:
                msg = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise InvalidRequest("messages are JSON objects, e.g. {\"type\": \"subscribe\", \"job_id\": ...}") \
                    from None
            if not isinstance(msg, dict):
                raise InvalidRequest("a message must be a JSON object")
            kind = msg.get("type")
            if kind == "ping":
                conn.push({"type": "pong"})
                return
            if kind not in ("subscribe", "unsubscribe"):
                raise InvalidRequest("type must be subscribe, unsubscribe or ping")
            job_id = msg.get("job_id")
            if not isinstance(job_id, str) or not job_id.strip():
                raise InvalidRequest("job_id must be a non-empty string")
            job_id = job_id.strip()[:64]
            if kind == "unsubscribe":
                self._leave(conn, job_id)
                conn.push({"type": "unsubscribed", "job_id": job_id})
                return
            if job_id not in conn.jobs and len(conn.jobs) >= MAX_SUBSCRIPTIONS:
                raise InvalidRequest(f"a connection follows at most {MAX_SUBSCRIPTIONS} jobs")
            self.jobs.get(conn.caller, job_id)  # NotFound for unknown or foreign jobs
            # "subscribed" goes out before the connection hears any notice of the job, so it
            # is always the first message about it (a job that has ended: with its end).
            view = self.jobs.peek(job_id)
            if view is None:
                return
            self._send_state(job_id, view, only=conn, kind="subscribed")
            if view.job.status.final:
                return
            conn.jobs.add(job_id)
            self.by_job.setdefault(job_id, set()).add(conn)
            # An end that came between the read and the registration reached nobody here:
            # tell it now (at worst the client hears the end twice).
            after = self.jobs.peek(job_id)
            if after is not None and after.job.status.final:
                self._leave(conn, job_id)
                self._send_state(job_id, after, only=conn)
        except G4LError as exc:
            conn.push({"type": "error", "code": exc.code, "message": exc.message})
        except Exception:
            log.exception("job socket message failed")
            conn.push({"type": "error", "code": "INTERNAL", "message": "internal server error"})

    def _leave(self, conn: Connection, job_id: str) -> None:
        conn.jobs.discard(job_id)
        subs = self.by_job.get(job_id)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                self.by_job.pop(job_id, None)

    # ------------------------------------------------------------ the connection
    def serve(self, environ: dict, start_response: Callable) -> list[bytes]:
        """The WSGI app of an upgrade request to ``/ws``."""
        try:
            caller = self.keys.caller(environ.get("HTTP_" + HEADER.upper().replace("-", "_")),
                                      environ.get("REMOTE_ADDR"))
            accept = websocket.accept_key(environ)
        except Unauthorized as exc:
            return _refuse(start_response, "401 Unauthorized", exc)
        except websocket.HandshakeError as exc:
            return _refuse(start_response, "400 Bad Request", InvalidRequest(str(exc)))
        owner = caller.owner or ""
        if self.connections.get(owner, 0) >= MAX_CONNECTIONS_PER_CALLER:
            return _refuse(start_response, "429 Too Many Requests", RateLimited(
                f"at most {MAX_CONNECTIONS_PER_CALLER} open /ws connections per key (or address)"))
        sock = client_socket(environ)
        sock.sendall(websocket.response_headers(accept))
        ws = websocket.WebSocket(sock, max_message_size=MAX_MESSAGE_BYTES)
        conn = Connection(ws, caller)
        self.connections[owner] = self.connections.get(owner, 0) + 1
        writer = gevent.spawn(conn.writer)
        conn.push({"type": "connected"})
        try:
            while conn.open:
                raw = ws.receive()
                if raw is None:
                    break
                self.handle(conn, raw)
        finally:
            conn.open = False
            self.connections[owner] -= 1
            if not self.connections[owner]:
                del self.connections[owner]
            for job_id in list(conn.jobs):
                self._leave(conn, job_id)
            try:
                conn.outbox.put_nowait(None)
            except Full:
                pass
            writer.join(timeout=1)
            writer.kill(block=False)
            ws.abort()  # gevent's server then reads EOF and ends the connection quietly
        return []


def _refuse(start_response: Callable, status: str, exc: G4LError) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps({"error": {"code": exc.code, "message": exc.message}}).encode()]


def install(app: Any, hub: JobSocketHub) -> None:
    """Answer websocket upgrades of ``/ws`` before Flask (which cannot hand over its
    socket); everything else, a plain ``GET /ws`` included, goes on to the app."""
    inner = app.wsgi_app

    def route(environ: dict, start_response: Callable) -> Any:
        if environ.get("PATH_INFO") == PATH and environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            return hub.serve(environ, start_response)
        return inner(environ, start_response)

    app.wsgi_app = route



def blueprint() -> Blueprint:
    """``GET /ws`` without an upgrade: documented (the message schema is in the OpenAPI
    description), answered 400."""
    bp = Blueprint("api_ws", __name__)

    @bp.get(PATH)
    @operation("jobSocket", "Job progress over a plain websocket (send Upgrade: websocket)", tags=["tellurstori"],
               responses={101: ("application/json", "Switching Protocols; then JSON text messages")},
               errors=(400,), description=(__doc__ or "").split("\n\n", 1)[1])
    def plain_get() -> Any:
        raise InvalidRequest("GET /ws is a websocket: send Upgrade: websocket")

    return bp
