"""``/api/v1/sessions/{id}/history``, ``/undo``, ``/redo``, ``/versions/{v}/checkout`` and
``/versions/{v}/audio``: the session history over HTTP. Parse, call
:class:`~g4l.services.history.HistoryService`, format (the Socket.IO twins are in
:mod:`g4l.web.history_events`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response
from pydantic import Field

from g4l.errors import InvalidRequest, SessionNotFound
from g4l.services.auth import Caller
from g4l.services.history import HistoryService, Moved, history_document, version_document
from g4l.web.api.access import http_caller
from g4l.web.api.download import file_responses, send_blob
from g4l.web.api.models import _Response
from g4l.web.api.openapi import PREFIX
from g4l.web.api.routing import operation
from plugin_protocol.payloads import HistoryPayload, VersionInfo

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_VERSION = re.compile(r"^[1-9][0-9]{0,15}$")
_MOVE_ERRORS = (404, 409, 410, 429)


class VersionLinks(_Response):
    audio: str = Field(description="The version's WAV (Range requests supported)")
    checkout: str
    session: str


class SessionHistory(HistoryPayload):
    """The session's versions, oldest first, and which one is current (no audio)."""

    model_config = _Response.model_config


class VersionMoved(_Response):
    """The session after an undo, redo or checkout: its new current version."""

    session_id: str
    version: VersionInfo
    links: VersionLinks


def _checked(session_id: str) -> str:
    if not _SESSION_ID.match(session_id):
        raise SessionNotFound(f"no session {session_id[:64]} (it ended or expired)")
    return session_id


def _version(text: str) -> int:
    if not _VERSION.match(text):
        raise InvalidRequest(f"version must be a whole number from 1 (got {text[:40]!r})")
    return int(text)


def version_links(session_id: str, version: int) -> VersionLinks:
    base = f"{PREFIX}/sessions/{session_id}"
    return VersionLinks(audio=f"{base}/versions/{version}/audio", checkout=f"{base}/versions/{version}/checkout",
                        session=base)


def blueprint(history: HistoryService) -> Blueprint:
    bp = Blueprint("api_history", __name__, url_prefix=PREFIX)

    def moved(result: Moved) -> VersionMoved:
        tree = history.ctx.sessions.history(result.session_id)
        info = version_document(result.version, tree.children(result.version.version), tree.current)
        return VersionMoved(session_id=result.session_id, version=VersionInfo.model_validate(info),
                            links=version_links(result.session_id, result.version.version))

    @bp.get("/sessions/<session_id>/history")
    @operation("getSessionHistory", "The session's versions (a tree: undo, redo, branches)", tags=["history"],
               responses={200: SessionHistory}, errors=(404,))
    def get_history(session_id: str) -> Any:
        """Every version the session's audio has had: what made it, from which version, with which parameters, and which
        is current. Twin of `history_request`."""
        return SessionHistory.model_validate(history_document(session_id, history.history(_checked(session_id),
                                                                                          http_caller())))

    def step(name: str, move: Callable[[str, Caller], Moved], operation_id: str, summary: str,
             description: str) -> None:
        """Register ``undo`` or ``redo``: one move of the session's pointer, in either direction."""

        @bp.post(f"/sessions/<session_id>/{name}", endpoint=name)
        @operation(operation_id, summary, tags=["history"], responses={200: VersionMoved}, errors=_MOVE_ERRORS,
                   description=description)
        def view(session_id: str) -> Any:
            return moved(move(_checked(session_id), http_caller()))

    step("undo", history.undo, "undoSession", "Make the current version's parent current",
         "Twin of `undo_request`. 409 `NOTHING_TO_UNDO` at the start of the history, "
         "409 `BUSY` while a generation of the session is queued or running.")
    step("redo", history.redo, "redoSession", "Go back to the version undo came from",
         "Twin of `redo_request`: the child the session was last on (after a new "
         "operation, the newest). 409 `NOTHING_TO_REDO` at the end of a branch.")

    @bp.post("/sessions/<session_id>/versions/<version>/checkout")
    @operation("checkoutVersion", "Make any kept version current", tags=["history"],
               responses={200: VersionMoved}, errors=(400, *_MOVE_ERRORS))
    def checkout(session_id: str, version: str) -> Any:
        """Twin of `checkout_request`. Continue and retry then act on it; a new operation starts a branch. 404
        `VERSION_NOT_FOUND`, 410 `VERSION_PRUNED`."""
        return moved(history.checkout(_checked(session_id), _version(version), http_caller()))

    @bp.get("/sessions/<session_id>/versions/<version>/audio")
    @operation("getVersionAudio", "Download a version's WAV (Range requests supported)", tags=["history"],
               responses=file_responses(), errors=(400, 404, 410, 416))
    def version_audio(session_id: str, version: str) -> Response:
        """Byte for byte the file the client received when the version was made."""
        record = history.version(_checked(session_id), _version(version), http_caller())
        return send_blob(history.ctx.blobs, record.blob, f"{session_id}-v{record.version}.wav",
                         in_flight=lambda: history.audio(record, stored_wait_s=0.0))

    return bp
