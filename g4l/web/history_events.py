"""The session history's Socket.IO events (``undo_request``, ``redo_request``,
``checkout_request``, ``history_request`` and the device's ``undo_transform_request``):
parse, call :class:`~g4l.services.history.HistoryService`, emit.

A move's answer carries the new current audio, sent as one pre-encoded packet like a
generation's result, to the session's room: everyone on the session hears the change.
"""

from __future__ import annotations

from typing import Any

from flask_socketio import emit, join_room

from g4l.services.history import HistoryService, Moved, history_document
from g4l.web.api.access import socket_caller
from g4l.web.offload import offload
from g4l.web.relay import Relay, audio_event_frames
from plugin_protocol import events
from plugin_protocol.normalize import parse_payload
from plugin_protocol.payloads import CheckoutRequest, SessionRef


class HistoryEvents:
    """``on_<event>`` handlers of the session history (a mixin of the namespace)."""

    history: HistoryService
    relay: Relay

    def on_undo_request(self, raw: Any = None, *_: Any) -> None:
        req = parse_payload(raw, SessionRef)
        self._send_version(events.UNDO_COMPLETE, self.history.undo(req.session_id, socket_caller()))

    def on_redo_request(self, raw: Any = None, *_: Any) -> None:
        req = parse_payload(raw, SessionRef)
        self._send_version(events.REDO_COMPLETE, self.history.redo(req.session_id, socket_caller()))

    def on_checkout_request(self, raw: Any = None, *_: Any) -> None:
        req = parse_payload(raw, CheckoutRequest)
        self._send_version(events.CHECKOUT_COMPLETE,
                           self.history.checkout(req.session_id, req.version, socket_caller()))

    def on_undo_transform_request(self, raw: Any = None, *_: Any) -> None:
        req = parse_payload(raw, SessionRef)
        self._send_version(events.TRANSFORM_UNDONE, self.history.undo_transform(req.session_id, socket_caller()))

    def on_history_request(self, raw: Any = None, *_: Any) -> dict[str, Any]:
        req = parse_payload(raw, SessionRef)
        doc = history_document(req.session_id, self.history.history(req.session_id, socket_caller()))
        emit(events.HISTORY_RESULT, doc)
        return doc  # also the acknowledgement, for clients that use emit-with-ack

    def _send_version(self, event: str, moved: Moved) -> None:
        join_room(moved.session_id)
        wav = self.history.audio(moved.version)
        extra = {"version": moved.version.version, "operation": moved.version.operation.value}
        frames = offload(audio_event_frames, event, wav, moved.session_id, extra)
        self.relay.emit_frames(frames, moved.session_id)
