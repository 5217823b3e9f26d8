"""The one Socket.IO namespace of the server: the device protocol
(:class:`~g4l.web.device_events.DeviceEvents`), live progress for HTTP clients
(:class:`~g4l.web.api.live.LiveEvents`) and the key check of every connection.

Every event handler is an ``on_<event>`` method that parses, calls one service method and
emits. :meth:`SocketNamespace.trigger_event` maps every failure to one ``error`` event
``{message, code, session_id?}`` with a stable code, so nothing a client sends can take
a handler (or the server) down.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pymongo.errors
import socketio
from flask_socketio import Namespace, emit

from g4l import keys
from g4l.errors import G4LError, Internal, InvalidRequest, StoreUnavailable, Unauthorized
from g4l.log import get_logger
from g4l.services.auth import ApiKeys
from g4l.services.history import HistoryService
from g4l.services.jobs import JobService
from g4l.services.listen import ListenService
from g4l.services.sessions import SessionService
from g4l.services.transform import TransformService
from g4l.web import metrics
from g4l.web.api.access import connect_socket
from g4l.web.api.live import JobEvents, LiveEvents
from g4l.web.device_events import DeviceEvents
from g4l.web.history_events import HistoryEvents
from g4l.web.packets import INVALID_PACKET
from g4l.web.relay import Relay
from g4l.web.transform_events import TransformEvents
from plugin_protocol import events
from plugin_protocol.normalize import PayloadError, as_object

log = get_logger(__name__)


def _session_hint(raw: Any) -> str | None:
    """The session id a (possibly invalid) payload names, for the error event."""
    try:
        value = as_object(raw).get("session_id")
    except Exception:  # whatever is wrong with it was (or will be) reported already
        return None
    value = value.strip()[:64] if isinstance(value, str) else None
    return value if keys.valid_id(value) else None


def _mapped(event: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` with every failure answered as an ``error`` event."""

    @functools.wraps(handler)
    def run(raw: Any = None, *extra: Any) -> Any:
        metrics.EVENTS.labels(event).inc()
        try:
            return handler(raw, *extra)
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
        except pymongo.errors.PyMongoError as exc:  # the store is down or timed out: send again
            metrics.ERRORS.labels(StoreUnavailable.code).inc()
            log.warning("audio store unavailable", socket_event=event, session_id=_session_hint(raw),
                        error=str(exc)[:200])
            emit(events.ERROR, StoreUnavailable(StoreUnavailable.RETRY, session_id=_session_hint(raw)).to_payload())
        except Exception:
            metrics.ERRORS.labels(Internal.code).inc()
            log.exception("handler crashed", socket_event=event, session_id=_session_hint(raw))
            emit(events.ERROR, Internal("internal server error", session_id=_session_hint(raw)).to_payload())
        return None

    return run


class SocketNamespace(DeviceEvents, HistoryEvents, TransformEvents, LiveEvents, Namespace):
    """Every event of the default namespace ``/``."""

    def __init__(self, service: SessionService, jobs: JobService, relay: Relay, keys: ApiKeys) -> None:
        super().__init__("/")
        self.service = service
        self.jobs = jobs
        self.relay = relay
        self.keys = keys
        self.listen = ListenService(service.ctx)
        self.history = HistoryService(service)
        self.transforms = TransformService(service)
        self.job_events = JobEvents(relay, jobs)
        relay.hooks.append(self.job_events.on_notice)

    def trigger_event(self, event: str, *args: Any) -> Any:
        handler = self._invalid_packet if event == INVALID_PACKET else getattr(self, f"on_{event}", None)
        if handler is None:
            return None  # an event nobody handles is ignored, as python-socketio does
        if event not in ("connect", "disconnect"):
            handler = _mapped(event, handler)
        assert self.socketio is not None
        return self.socketio._handle_event(handler, event, self.namespace, *args)

    @staticmethod
    def _invalid_packet(reason: Any = None, *_: Any) -> None:
        """A packet whose JSON could not be parsed (:mod:`g4l.web.packets`)."""
        raise InvalidRequest(f"the event could not be read: {reason}")

    def on_connect(self, auth: Any = None) -> None:
        """With API keys configured, a socket must present one (``auth: {"api_key": ...}``
        or the ``X-API-Key`` handshake header), or it is refused with ``connect_error``
        ``{message, data: {message, code: "UNAUTHORIZED"}}``."""
        try:
            connect_socket(self.keys, auth)
        except Unauthorized as exc:
            log.info("socket refused", code=exc.code)
            # python-socketio's own exception (the built-in one loses the code): the client's
            # connect_error is {"message", "data": {"message", "code"}}.
            raise socketio.exceptions.ConnectionRefusedError(exc.message, {"message": exc.message, "code": exc.code}) \
                from None

    def on_disconnect(self, *_: Any) -> None:
        """Nothing to clean up: rooms go with the socket, sessions live on."""
